"""labkit.checkpoints: a run killed with SIGKILL and resumed from its last checkpoint ends as an uninterrupted run."""

import json
import signal

import pytest
from safetensors.torch import load_file

from labkit.checkpoints import FINAL, RESULT, checkpoint_contents, last_checkpoint, run, run_in_process

STEPS, SAVE_STEPS, KILL_AT = 8, 3, 5
OPTIONS = dict(steps=STEPS, save_steps=SAVE_STEPS, examples=160)


def finished(folder):
    return json.loads((folder / RESULT).read_text())["losses"], load_file(folder / FINAL / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    whole, broken = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("broken")
    done = run_in_process(whole, **OPTIONS)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = run_in_process(broken, kill_at=KILL_AT, **OPTIONS)
    killed_state = {"returncode": killed.returncode, "last": last_checkpoint(broken), "result": (broken / RESULT).exists()}
    resumed = run_in_process(broken, resume=True, **OPTIONS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return whole, broken, killed_state


@pytest.mark.slow
def test_the_killed_process_died_of_sigkill_after_its_last_checkpoint(runs):
    _, _, killed = runs
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["last"].name == f"checkpoint-{KILL_AT // SAVE_STEPS * SAVE_STEPS}" and not killed["result"]


@pytest.mark.slow
def test_the_resumed_run_ends_with_the_uninterrupted_runs_losses_and_weights(runs):
    whole, broken, _ = runs
    (whole_losses, whole_weights), (resumed_losses, resumed_weights) = finished(whole), finished(broken)
    assert len(resumed_losses) == len(whole_losses) == STEPS
    # Same data order, RNG, optimizer and scheduler state: the same arithmetic, so equal to round-off.
    assert resumed_losses == pytest.approx(whole_losses, abs=1e-6)
    assert set(resumed_weights) == set(whole_weights)
    assert max(float((resumed_weights[n] - whole_weights[n]).abs().max()) for n in whole_weights) < 1e-6


@pytest.mark.slow
def test_a_checkpoint_holds_what_resuming_needs(runs):
    whole, _, _ = runs
    files = checkpoint_contents(last_checkpoint(whole))
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(files)
    assert files["optimizer.pt"] > files["model.safetensors"]  # AdamW: two fp32 moments per weight


@pytest.mark.parametrize("options, error, message", [
    (dict(kill_at=STEPS), ValueError, "kill_at must be a step between 1 and 7"),
    (dict(resume=True), FileNotFoundError, "holds no checkpoint"),
])
def test_bad_runs_are_refused_before_training(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        run(tmp_path / "none", **OPTIONS, **options)
