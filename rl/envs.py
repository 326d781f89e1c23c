"""Multi-turn environments of a rollout (rl.rollout): after every generation turn, the environment says,
for each row, what text to append (masked out of the loss: the policy did not write it) and whether the
row is done.

    SingleTurn      one generation turn (plain GRPO on a prompt set; SearchR1 without a search tool)
    SearchEnv       Search-R1's protocol: a turn ending in ``</search>`` gets the search results as
                    ``<information>...</information>`` and the row goes on; ``</answer>`` ends it; after
                    ``max_searches`` searches a further ``</search>`` ends the row unanswered
    TwoAttemptEnv   SCoRe's protocol: attempt 1; then a fixed instruction as a new user turn; then attempt 2

An environment is stateful for one rollout: :meth:`Environment.reset` is called with the number of rows
before the first turn, and :meth:`Environment.counters` gives per-row counts afterwards. A method takes its
environment as an argument (``env:`` with a ``class_path`` in the config) and its outcome reward as a
:class:`Reward`; a new one is a class in a file of its own (docs/extending.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from generation.prompts import render_messages
from rl.search import SafeSearch, SearchEngine

SEARCH_STOP, ANSWER_STOP = "</search>", "</answer>"
_QUERY = re.compile(r"<search>(.*?)</search>", re.DOTALL)


@dataclass
class Turn:
    """One row's generation turn, as the rollout hands it to the environment."""
    row: int             # the row of the rollout batch
    turn: int            # 0-based index of the turn just generated
    text: str            # the text generated in this turn (special tokens dropped)
    stop: str | None     # the stop string that ended it (None: EOS or the token budget)
    eos: bool            # the turn ended with an EOS token
    room: int            # response tokens still allowed for this row


@dataclass
class Reply:
    append: str = ""     # text inserted after the turn (not trained on); "" for nothing
    done: bool = True


Reward = Callable[[Sequence[str], Sequence[dict]], list[float]]
"""An outcome reward ``reward(responses, examples) -> list[float]``, one value per response. ``responses`` are the
policy's texts only (never the prompt), ``examples`` the whole dataset rows (dicts) they answer; tasks.qa_rewards
and tasks.loaders hold the evaluation metrics in this form. In a config: a function's import path, or a
``class_path`` (with ``init_args``) of a class whose instances are called."""


class Environment:
    """Base: ``stops`` end a generation turn (besides EOS); ``max_turns`` bounds the generation turns."""

    stops: tuple[str, ...] = ()
    max_turns: int = 1

    def reset(self, n: int) -> None:
        self.n = n

    def step(self, turns: list[Turn]) -> list[Reply]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(turns)")

    def counters(self) -> dict[str, list[int]]:
        return {}


class SingleTurn(Environment):
    def __init__(self, stops: Sequence[str] = (ANSWER_STOP,)):
        self.stops = tuple(stops)

    def step(self, turns: list[Turn]) -> list[Reply]:
        return [Reply(done=True) for _ in turns]


class SearchEnv(Environment):
    """Search-R1's tool protocol over ``search``: an engine (``rl.search.SearchEngine``: BM25Search, DenseSearch,
    HTTPSearch, ...), wrapped in ``rl.search.SafeSearch`` with ``k`` passages per search of at most ``max_chars``
    characters each and ``timeout`` seconds per call (a failed search becomes an ``<information>`` error
    message and is counted); or an object that already has ``information(queries) -> list[str]`` and
    ``last_errors``. At most ``max_searches`` searches per rollout. All queries of a turn go to the engine in
    one call."""

    stops = (SEARCH_STOP, ANSWER_STOP)

    def __init__(self, search: SearchEngine, max_searches: int = 2, k: int = 3, timeout: float | None = 60.0,
                 max_chars: int | None = None):
        if max_searches < 0:
            raise ValueError(f"SearchEnv: max_searches must be >= 0, got {max_searches}")
        if not hasattr(search, "information"):
            search = SafeSearch(search, k, timeout, max_chars)
        self.search, self.max_searches = search, max_searches
        self.max_turns = max_searches + 1  # B searches, then a final turn whose search is not executed
        self.reset(0)

    def reset(self, n: int) -> None:
        self.n, self.searches, self.errors = n, [0] * n, [0] * n

    def step(self, turns: list[Turn]) -> list[Reply]:
        replies = [Reply(done=True) for _ in turns]
        askers = [j for j, t in enumerate(turns)
                  if t.stop == SEARCH_STOP and self.searches[t.row] < self.max_searches and t.room > 0]
        if not askers:
            return replies
        queries = []
        for j in askers:
            found = _QUERY.findall(turns[j].text)
            queries.append(found[-1].strip() if found else "")
        infos = self.search.information(queries)
        failed = int(getattr(self.search, "last_errors", 0)) > 0
        for j, info in zip(askers, infos):
            row = turns[j].row
            self.searches[row] += 1
            self.errors[row] += int(failed)
            replies[j] = Reply(append="\n\n" + info + "\n\n", done=False)
        return replies

    def counters(self) -> dict[str, list[int]]:
        return {"searches": list(self.searches), "search_errors": list(self.errors)}


class TwoAttemptEnv(Environment):
    """Attempt 1, then ``instruction`` appended (masked out of the loss), then attempt 2 (SCoRe, Kumar et
    al., 2024). ``between`` is the text inserted, with ``{instruction}`` in it; :meth:`for_chat` builds it
    from a tokenizer's chat template (close the assistant turn, a user turn with the instruction, open the
    next assistant turn). When attempt 1 ended with EOS, a leading ``end_of_turn`` in ``between`` is
    dropped (the EOS already closed the turn, and is part of the generated tokens)."""

    max_turns = 2

    def __init__(self, instruction: str, between: str = "\n\n{instruction}\n\n", end_of_turn: str | None = None,
                 stops: Sequence[str] = ()):
        if "{instruction}" not in between:
            raise ValueError(f"TwoAttemptEnv: between={between!r} has no {{instruction}} field")
        self.text = between.format(instruction=instruction)
        self.end_of_turn, self.stops = end_of_turn, tuple(stops)
        self.reset(0)

    @classmethod
    def for_chat(cls, tokenizer, instruction: str, stops: Sequence[str] = ()) -> TwoAttemptEnv:
        """The instruction as a user turn of ``tokenizer``'s chat template."""
        marker_a, marker_i = "\x00ATTEMPT\x00", "\x00INSTRUCTION\x00"
        text = render_messages(tokenizer, [{"role": "user", "content": "question"},
                                           {"role": "assistant", "content": marker_a},
                                           {"role": "user", "content": marker_i}], chat=True)
        if marker_a not in text or marker_i not in text:
            raise ValueError("TwoAttemptEnv.for_chat: the tokenizer's chat template drops message contents")
        between = text.split(marker_a, 1)[1].replace(marker_i, "{instruction}")
        return cls(instruction, between, tokenizer.eos_token, stops)

    def reset(self, n: int) -> None:
        self.n, self.attempts = n, [0] * n

    def step(self, turns: list[Turn]) -> list[Reply]:
        replies = []
        for t in turns:
            self.attempts[t.row] = t.turn + 1
            if t.turn >= 1:
                replies.append(Reply(done=True))
                continue
            replies.append(Reply(append=self.text_after(t.eos), done=False))
        return replies

    def text_after(self, eos: bool) -> str:
        """The instruction text to append after a turn; without its leading ``end_of_turn`` when the turn
        ended with EOS (which already closed it)."""
        if eos and self.end_of_turn and self.text.startswith(self.end_of_turn):
            return self.text[len(self.end_of_turn):]
        return self.text

    def counters(self) -> dict[str, list[int]]:
        return {"attempts": list(self.attempts)}
