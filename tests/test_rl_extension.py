"""The RL extension points of docs/extending.md, used as a user would: one new file (tests/extension_examples/toy_rl.py:
a reward, an environment, an advantage estimator) and a YAML config read by train.py's LightningCLI. Each toy part
must be the one that runs: the rewards, the turns and the advantages of a step are checked against hand values."""

import json

import pytest
import torch

from extension_examples.toy_rl import HintEnv, ShortAnswer
from rl.update import advantages
from train import cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH_R1 = """
model:
  class_path: lightning_modules.search_r1.SearchR1
  init_args:
    lm: {{name_or_path: {model}}}
    env:
      class_path: extension_examples.toy_rl.HintEnv
      init_args: {{hint: " Again:"}}
    reward:
      class_path: extension_examples.toy_rl.ShortAnswer
      init_args: {{max_words: 3}}
    algorithm: extension_examples.toy_rl.scaled_mean
    advantage_options: {{scale: 2.0}}
    sampling: {{group_size: 2, max_turn_tokens: 4, max_response_tokens: 24, temperature: 0.7}}
    template: "{{question}}"
    chat: false
data:
  class_path: datamodules.rl_prompts.RLPromptDataModule
  init_args: {{train_file: {train}, test_file: null, batch_size: 2}}
trainer: {{max_steps: 1, accelerator: cpu, logger: false, enable_checkpointing: false, enable_progress_bar: false,
          default_root_dir: {root}}}
"""

SCORE = """
model:
  class_path: lightning_modules.score.SCoRe
  init_args:
    lm: {{name_or_path: {model}}}
    task: arithmetic
    env:
      class_path: extension_examples.toy_rl.HintEnv
    reward:
      class_path: extension_examples.toy_rl.ShortAnswer
      init_args: {{max_words: 2}}
    sampling: {{group_size: 2, max_turn_tokens: 3, max_response_tokens: 24}}
data:
  class_path: datamodules.self_correction.SelfCorrectionDataModule
  init_args: {{task: arithmetic, options: {{num_problems: 4}}, batch_size: 2, limit_test: 2, prompt: "{{problem}}"}}
trainer: {{max_steps: 1, accelerator: cpu, logger: false, enable_checkpointing: false, enable_progress_bar: false,
          limit_val_batches: 0, default_root_dir: {root}}}
"""


def parse(config: str, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return cli_main(["--config", str(path)], run=False)


@pytest.fixture
def questions(tmp_path):
    rows = [{"question": f"question {i}", "answers": ["yes"]} for i in range(2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "train.jsonl"


def test_search_r1_takes_a_toy_reward_environment_and_advantage_from_a_config(tiny_llama_dir, questions, tmp_path):
    cli = parse(SEARCH_R1.format(model=tiny_llama_dir, train=questions, root=tmp_path), tmp_path)
    model = cli.model
    assert isinstance(model.env, HintEnv) and model.env.hint == " Again:"
    assert isinstance(model.reward, ShortAnswer) and model.reward.max_words == 3
    model.configure_model()
    torch.manual_seed(0)
    r = model.sample(model.prompts(["question 0", "question 1"], 2))
    assert (r.turn_ids.max(dim=1).values == 1).all()  # the toy environment asked every row for a second turn
    rewards = model.rewards(r, [{"answers": ["yes"]}] * 4)
    assert rewards.tolist() == [float(len(x.split()) <= 3) for x in r.responses]
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])  # unequal within the first group: the scale shows
    adv, _ = advantages(model.estimator.name, r, rewards, model.loss, group_size=2, **model.advantage_options)
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]  # 2.0 * (r - group mean)
    cli.trainer.fit(model, cli.datamodule)
    assert cli.trainer.global_step == 1 and "train/reward" in cli.trainer.callback_metrics


def test_score_takes_a_toy_reward_and_environment_from_a_config(tiny_llama_dir, tmp_path):
    cli = parse(SCORE.format(model=tiny_llama_dir, root=tmp_path), tmp_path)
    model = cli.model
    assert isinstance(model.env, HintEnv) and isinstance(model.reward_fn, ShortAnswer)
    cli.trainer.fit(model, cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1 and {"train/acc_t1", "train/acc_t2"} <= set(metrics)
    out = cli.trainer.test(model, cli.datamodule, verbose=False)[0]
    assert {"test/acc_t1", "test/acc_t2"} <= set(out)


def test_an_unregistered_estimator_is_refused_by_name(tiny_llama_dir, questions, tmp_path):
    config = SEARCH_R1.format(model=tiny_llama_dir, train=questions, root=tmp_path).replace(
        "extension_examples.toy_rl.scaled_mean", "extension_examples.toy_rl.ShortAnswer")
    with pytest.raises(ValueError, match="'ShortAnswer' in extension_examples.toy_rl is not decorated with "
                                         "rl.advantages.register_advantage"):
        parse(config, tmp_path)


def test_an_estimator_option_it_does_not_take_is_refused():
    from rl.advantages import get_advantage

    get_advantage("grpo").check_options({"normalize_std": False})
    with pytest.raises(ValueError, match=r"'grpo' takes no option \['normalise_std'\]; its options: \['normalize_std'"):
        get_advantage("grpo").check_options({"normalise_std": False})
    assert get_advantage("ppo") is not get_advantage("gae") and get_advantage("ppo").fn is get_advantage("gae").fn
    assert get_advantage("ppo").value_head and not get_advantage("grpo").value_head
