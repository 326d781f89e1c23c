"""Settings of the LM core, grouped so every method names them alike: greedy decoding
(``--model.init_args.generation.max_new_tokens``, ``...generation.batch_size``) and the NLI filter
(``...nli.model``, ``...nli.threshold``). A method gives its own default instance; a config overrides single
fields and keeps the rest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Generation:
    """Greedy answer generation (``generation.generate``).

    Args:
        max_new_tokens: the longest answer, in tokens (a row stops earlier at a newline or EOS).
        batch_size: prompts generated (and, for the LM judge, scored) at once.
    """
    max_new_tokens: int = 24
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"generation.max_new_tokens and generation.batch_size must be >= 1, got "
                             f"{self.max_new_tokens} and {self.batch_size}")


@dataclass
class NLIFilter:
    """The judge of RetRobust's NLI filter (``generation.nli.make_judge``): a read answer is kept only if the
    passages entail "question + answer".

    Args:
        model: ``lm``: the reader itself as a prompted yes/no judge (``generation.nli.LMJudge``); else an NLI
            classifier's name or folder (e.g. a local copy of facebook/bart-large-mnli, the paper's).
        threshold: the entailment probability needed (None: 0.5 for the LM judge, argmax for a classifier).
    """
    model: str = "lm"
    threshold: float | None = None
