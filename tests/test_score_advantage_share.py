"""``train/nonzero_advantage_share`` as SCoRe's training step logs it: the share of prompt groups whose task-reward
advantages are not all zero, per attempt and overall (rl.advantages.nonzero_group_share via
PolicyGradientModule.log_advantage_share).

Crafted so that each plausible mistake shows: three problems of unequal prompt length, G = 2, attempts forced so that
problem a is right at both attempts in both samples (rewards 1, advantages 0), problem b is mixed at attempt 1, and
problem c is wrong at attempt 1 in both samples but mixed at attempt 2. The policy differs from the reference, so a
share computed on the advantages WITH the KL penalty would count every group; one computed on the rewards would count
problem a; groups taken as strided rows (view(G, -1)) would mix problems."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, LogitsProcessorList

from rl.advantages import nonzero_group_share
from rl.score import Objective
from rl.self_correction import ProblemFormat
from rl.settings import PolicyLoss, SampleLog, Sampling, Updates
from test_score_module_step import ForceTwoAttempts, Recorded, RecordingSGD, answer_reward
from training.settings import LM

pytestmark = pytest.mark.usefixtures("one_thread")
PROBLEMS = [{"id": "a", "task": "gsm8k", "problem": "Add 2 and 5.", "answer": "7"},
            {"id": "b", "task": "gsm8k", "problem": "What is the sum of four and five, as a number?", "answer": "9"},
            {"id": "c", "task": "gsm8k", "problem": "Two plus three?", "answer": "5"}]
FIRST = [" 7", " 7", " 3", " 9", " 1", " 2"]    # r1: a [1, 1], b [0, 1], c [0, 0]
SECOND = [" 7", " 7", " 9", " 9", " 4", " 5"]   # r2: a [1, 1], b [1, 1], c [0, 1]


def step_metrics(model_dir, stage: str, alpha: float) -> tuple[dict, Recorded]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = Recorded(LM(model_dir), stage=stage, task="gsm8k", reward=answer_reward, instruction="Check it.",
                     sampling=Sampling(group_size=2, max_turn_tokens=4, max_response_tokens=40, temperature=0.7,
                                       generation_kwargs={"logits_processor": LogitsProcessorList([ForceTwoAttempts(tok, FIRST, SECOND)])}),
                     objective=Objective(alpha=alpha, beta1=0.2, beta2=0.5),
                     loss=PolicyLoss(aggregation="seq-mean-token-sum", kl_in_reward=True),
                     updates=Updates(micro_batch_size=8, max_grad_norm=None), log_samples=SampleLog(count=0),
                     optimizer=RecordingSGD)
    model.format = ProblemFormat(prompt="{problem}", chat=False)
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(PROBLEMS, batch_size=3, collate_fn=lambda rows: rows))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, model


@pytest.mark.parametrize("stage, alpha, t1, t2, any_turn", [("II", 10.0, 1 / 3, 2 / 3, 2 / 3), ("II", 0.0, 1 / 3, 1 / 3, 2 / 3),
                                                         ("I", 10.0, 0.0, 1 / 3, 1 / 3)])
def test_score_step_logs_the_share_of_groups_with_a_task_signal(tiny_llama_dir, stage, alpha, t1, t2, any_turn):
    m, model = step_metrics(tiny_llama_dir, stage, alpha)
    assert [t[0].strip() for t in model.rollouts.turn_texts] == [x.strip() for x in FIRST]
    assert m["train/acc_t1"] == pytest.approx(0.5) and m["train/acc_t2"] == pytest.approx(5 / 6)
    assert m["train/kl_t1"] != 0.0   # the KL penalty is in the update's returns, and not in the share
    # Stage II: attempt 1 returns r1, only b's group varies; attempt 2 returns r2 + alpha (r2 - r1): a [1, 1] (zero),
    # b [11, 1], c [0, 11] at alpha 10, and b [1, 1] (zero), c [0, 1] at alpha 0, where b carries a signal on attempt
    # 1 only and c on attempt 2 only (overall 2/3). Stage I: attempt 1 returns 0; attempt 2 returns r2: c only.
    assert m["train/nonzero_advantage_share_t1"] == pytest.approx(t1)
    assert m["train/nonzero_advantage_share_t2"] == pytest.approx(t2)
    assert m["train/nonzero_advantage_share"] == pytest.approx(any_turn)


def test_nonzero_group_share_by_hand():
    # G = 3: [0, 0, 0] no signal; [0.5, 0, -0.5] (rewards [1, 0.5, 0], group-mean baseline) a signal in one group
    # (2 of its 3 rows); [2, 2, 2] as advantages is a signal. Groups: 2/3; rows would be 5/9.
    adv = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0, -0.5, 2.0, 2.0, 2.0])
    assert float(nonzero_group_share(adv, 3)) == pytest.approx(2 / 3)
    per_turn = torch.stack([adv, torch.tensor([0.0, 0.0, 1e-9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])], dim=1)
    assert nonzero_group_share(per_turn, 3).tolist() == pytest.approx([2 / 3, 0.0])   # 1e-9: rounding, not signal
    with pytest.raises(ValueError, match="groups of 4 rows"):   # groups have equal sizes; a ragged batch is refused
        nonzero_group_share(adv, 4)
