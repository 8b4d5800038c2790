"""labkit.monitor: what a RunMonitor writes to TensorBoard event files is what the trainer logged."""

import copy
import math

import pytest
from datasets import Dataset
from transformers import TrainerControl, TrainerState

from labkit.monitor import TAGS, TOKEN_COUNTING, RunMonitor, exp_loss, read_scalars
from labkit.profiles import get_profile
from labkit.train import sft, sft_config

STEPS, BATCH = 3, 4


def rows(n: int) -> Dataset:
    """Prompt-completion rows of n different lengths: every batch of two or more needs padding."""
    return Dataset.from_list([{"prompt": f"Count{' a' * i}\nAnswer:", "completion": f" {i}"} for i in range(n)])


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """A LoRA run of STEPS steps over STEPS * BATCH rows (one epoch: every row seen once), logged every step."""
    from peft import LoraConfig, get_peft_model

    logdir = tmp_path_factory.mktemp("tensorboard") / "lora"
    model = get_peft_model(copy.deepcopy(base[0]), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))
    config = sft_config(get_profile("cpu-tiny"), kind="lora", max_steps=STEPS, per_device_train_batch_size=BATCH,
                        logging_steps=1, eval_strategy="steps", eval_steps=STEPS, disable_tqdm=True, **TOKEN_COUNTING)
    trainer = sft(model, base[1], rows(STEPS * BATCH), config, eval_dataset=rows(4), callbacks=[RunMonitor(logdir)])
    return trainer, read_scalars(logdir.parent)


def series(scalars, tag: str) -> dict[int, float]:
    part = scalars[scalars.tag == tag]
    return dict(zip(part.step, part.value))


@pytest.mark.slow
@pytest.mark.parametrize("tag, key", [("train/loss", "loss"), ("train/learning_rate", "learning_rate"),
                                      ("train/grad_norm", "grad_norm"), ("eval/loss", "eval_loss")])
def test_values_read_from_the_files_equal_the_trainers_log(run, tag, key):
    trainer, scalars = run
    logged = {h["step"]: h[key] for h in trainer.state.log_history if key in h}
    assert len(logged) == (1 if key == "eval_loss" else STEPS)
    assert series(scalars, tag) == pytest.approx(logged, rel=1e-6, abs=1e-12)  # TensorBoard stores float32


@pytest.mark.slow
def test_every_tag_is_written_in_the_run_folder_and_perplexity_is_exp_loss(run):
    _, scalars = run
    assert set(scalars.tag) == set(TAGS) and set(scalars.run) == {"lora"}
    for name in ("train", "eval"):
        loss, ppl = series(scalars, f"{name}/loss"), series(scalars, f"{name}/perplexity")
        assert ppl == pytest.approx({step: math.exp(value) for step, value in loss.items()}, rel=1e-5)


@pytest.mark.slow
def test_tokens_counted_are_the_real_tokens_of_the_batches(run):
    trainer, scalars = run
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]  # as tokenized for training, EOS included
    assert len(set(lengths)) == len(lengths)  # so every batch was padded: counting padding would give more
    tokens = series(scalars, "train/tokens_seen")
    assert tokens[STEPS] == sum(lengths) == trainer.state.num_input_tokens_seen
    assert list(tokens.values()) == sorted(tokens.values()) and tokens[1] < tokens[STEPS]
    assert all(v > 0 for v in series(scalars, "train/tokens_per_second").values())


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "never-written", "is not a folder"),
    (lambda tmp: tmp, "no TensorBoard event files"),
])
def test_reading_a_missing_or_empty_logdir_says_so(tmp_path, make, message):
    with pytest.raises(FileNotFoundError, match=message):
        read_scalars(make(tmp_path))


def test_the_monitor_refuses_a_config_that_does_not_count_tokens(tmp_path):
    config = sft_config(get_profile("cpu-tiny"), max_steps=1)
    with pytest.raises(ValueError, match="include_num_input_tokens_seen='non_padding'"):
        RunMonitor(tmp_path).on_train_begin(config, TrainerState(), TrainerControl())
    assert not list(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("loss, expected", [(0.0, 1.0), (math.log(7.0), 7.0), (1e4, math.inf)])
def test_exp_loss(loss, expected):
    assert exp_loss(loss) == pytest.approx(expected)
