import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, main
from labkit.memory import estimate_memory

GOOD = {"prompt": "Flip: a, b", "completion": " b, a"}


def write_lines(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return path


@pytest.mark.slow
def test_the_command_runs_as_a_program_and_exits_with_the_validation_result(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD, {"prompt": "x"}])
    out = subprocess.run([sys.executable, "-m", "labkit", "data", "validate", str(path), "--format", "completion"],
                         capture_output=True, text=True)
    assert out.returncode == EXIT_PROBLEM
    assert out.stderr.splitlines()[-1] == "record 1: 'completion' is missing; completion records need prompt, completion"


@pytest.mark.parametrize("args, options", [
    ([], ["train", "eval", "merge", "fit", "data"]),
    (["train"], ["--set", "--resume", "--no-resume", "--force", "output_dir", "memory_gib", "Exit 1"]),
    (["eval"], ["run_dir", "eval.json", "eval.md", "paired"]),
    (["merge"], ["run_dir", "--out", "--dtype", "dequantized", "merge.json"]),
    (["fit"], ["--method", "--seq-len", "--batch-size", "--gpu-gib", "--gradient-checkpointing", "--r", "--reference"]),
    (["data", "validate"], ["--format", "--allow-extra", "--max-tokens", "--on-bad-records", "--out", "--rejects"]),
])
def test_help_for_each_subcommand(capsys, args, options):
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0 and out.startswith("usage: labkit")
    assert all(option in out for option in options)


def test_bad_records_exit_1_with_every_problem_and_the_count(tmp_path, capsys):
    rows = [GOOD, {"prompt": "", "completion": " b"}, {"prompt": "x"}, GOOD]
    code = main(["data", "validate", str(write_lines(tmp_path / "d.jsonl", rows)), "--format", "completion"])
    out, err = capsys.readouterr()
    assert code == EXIT_PROBLEM
    assert err.splitlines() == ["record 1: 'prompt' is empty; expected non-empty text",
                                "record 2: 'completion' is missing; completion records need prompt, completion"]
    assert "4 records, 2 valid, 2 invalid (2 problems)" in out


def test_a_clean_file_exits_0(tmp_path, capsys):
    assert main(["data", "validate", str(write_lines(tmp_path / "d.jsonl", [GOOD] * 3)), "--format", "completion"]) == EXIT_OK
    assert "3 records, 3 valid, 0 invalid" in capsys.readouterr().out


def test_skip_writes_good_and_rejected_records_apart_and_drops_nothing(tmp_path):
    rows = [GOOD, {"prompt": "x", "completion": " y", "source": "web"}, {"prompt": 3, "completion": " y"}, GOOD]
    good, rejects = tmp_path / "out" / "good.jsonl", tmp_path / "rejects.jsonl"
    code = main(["data", "validate", str(write_lines(tmp_path / "d.jsonl", rows)), "--format", "completion",
                 "--on-bad-records", "skip", "--out", str(good), "--rejects", str(rejects)])
    assert code == EXIT_OK
    kept = [json.loads(line) for line in good.read_text().splitlines()]
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert kept == [GOOD, GOOD]
    assert [r["index"] for r in rejected] == [1, 2] and [r["record"] for r in rejected] == rows[1:3]
    assert "'source'" in rejected[0]["problems"][0] and "'prompt'" in rejected[1]["problems"][0]


def test_extra_fields_can_be_allowed_by_name(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD | {"source": "web"}])
    assert main(["data", "validate", str(path), "--format", "completion"]) == EXIT_PROBLEM
    assert main(["data", "validate", str(path), "--format", "completion", "--allow-extra", "source"]) == EXIT_OK
    assert main(["data", "validate", str(path), "--format", "completion", "--allow-extra"]) == EXIT_OK


@pytest.mark.parametrize("content, expected", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": \n', "line 2: not JSON"),
    (None, "no such file"),
])
def test_an_unreadable_file_is_a_usage_error_that_says_where(tmp_path, capsys, content, expected):
    path = tmp_path / "d.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["data", "validate", str(path), "--format", "completion"]) == EXIT_USAGE
    assert expected in capsys.readouterr().err


def test_skip_without_somewhere_to_write_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["data", "validate", str(write_lines(tmp_path / "d.jsonl", [GOOD])), "--format", "completion",
              "--on-bad-records", "skip"])
    assert stopped.value.code == EXIT_USAGE
    assert "needs --out and --rejects" in capsys.readouterr().err


def test_fit_prints_labkit_memorys_estimate(capsys):
    assert main(["fit", "Qwen2.5-0.5B", "--method", "lora", "--seq-len", "512", "--batch-size", "2"]) == EXIT_OK
    report = estimate_memory("Qwen2.5-0.5B", method="lora", device="cuda", batch_size=2, seq_len=512, r=16,
                             precision="bf16-mixed", optimizer="adamw_torch", gradient_checkpointing="full")
    assert str(report) in capsys.readouterr().out


def test_fit_on_a_gpu_size_names_the_count_or_exits_1_when_nothing_holds_it(capsys):
    assert main(["fit", "Llama-3.1-70B", "--method", "full", "--gpu-gib", "80"]) == EXIT_OK
    assert "80 GiB GPUs with ZeRO" in capsys.readouterr().out
    assert main(["fit", "Qwen2.5-0.5B", "--method", "qlora", "--gpu-gib", "80"]) == EXIT_OK
    assert "fits on one 80 GiB GPU" in capsys.readouterr().out
    assert main(["fit", "Qwen2.5-0.5B", "--method", "full", "--gpu-gib", "0.5"]) == EXIT_PROBLEM


def test_fit_reads_a_config_json_and_refuses_an_unknown_name(tmp_path, base, capsys):
    path = tmp_path / "config.json"
    path.write_text(base[0].config.to_json_string())
    assert main(["fit", str(path), "--method", "full", "--seq-len", "128"]) == EXIT_OK
    assert "estimate:" in capsys.readouterr().out
    assert main(["fit", "No-Such-Model", "--method", "full"]) == EXIT_USAGE
    assert "neither a registry name" in capsys.readouterr().err


def test_fit_for_preference_training_counts_the_reference_model(capsys):
    args = ["fit", "Qwen2.5-0.5B", "--method", "full", "--seq-len", "512"]
    assert main(args + ["--reference", "model"]) == EXIT_OK
    report = estimate_memory("Qwen2.5-0.5B", method="full", device="cuda", seq_len=512, precision="bf16-mixed",
                             gradient_checkpointing="full", objective="preference", reference="model")
    assert report.breakdown["reference"] > 0 and str(report) in capsys.readouterr().out


RECIPE = Path(__file__).parent.parent / "recipes" / "cpu-tiny-sft-lora.yaml"
SMALL = ["--set", "steps=6", "--set", "save_steps=2", "--set", "train_examples=20", "--set", "eval_examples=10"]
RESUME_TOLERANCE = 1e-6
"""Largest |weight difference| allowed between a killed-and-resumed run and an uninterrupted one (0.0 measured on
one CPU thread: the checkpoint restores optimizer, scheduler, RNG states and the data position)."""
MERGE_TOLERANCE = 1e-3
"""Largest |logit difference| allowed between a merged model reloaded from disk and the unmerged adapter model."""


def labkit_command(*args):
    return [sys.executable, "-m", "labkit", *map(str, args)]


def run_labkit(*args):
    return subprocess.run(labkit_command(*args), capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_with_an_unknown_recipe_key_exits_2_and_suggests_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "lora_rank": 8}))
    out = run_labkit("train", path)
    assert out.returncode == EXIT_USAGE
    assert "unknown key 'lora_rank'" in out.stderr and "Known keys: output_dir," in out.stderr
    assert not (tmp_path / "run").exists()


def test_train_with_a_bad_override_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["train", str(RECIPE), "--set", f"output_dir={tmp_path}", "--set", "stpes=3"]) == EXIT_USAGE
    assert "--set: unknown key 'stpes'. Did you mean 'steps'?" in capsys.readouterr().err


def test_train_with_bad_records_exits_1_naming_each_record(tmp_path, capsys):
    data = write_lines(tmp_path / "d.jsonl", [GOOD, {"prompt": "x"}, GOOD, {"prompt": "y", "completion": 3}])
    code = main(["train", str(RECIPE), "--set", f"output_dir={tmp_path / 'run'}", "--set", f"data={data}"])
    err = capsys.readouterr().err
    assert code == EXIT_PROBLEM
    assert "record 1: 'completion' is missing" in err and "record 3: 'completion'" in err
    assert not (tmp_path / "run" / "model").exists()


def test_train_refuses_a_run_the_device_cannot_hold_with_the_numbers(tmp_path, capsys):
    code = main(["train", str(RECIPE), "--set", f"output_dir={tmp_path}", "--set", "memory_gib=0.01"])
    err = capsys.readouterr().err
    assert code == EXIT_PROBLEM
    assert "refused: the run needs an estimated" in err and "has 0.01 GiB" in err and "--force" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written or loaded


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """An uninterrupted LoRA run of the shipped recipe, shrunk, as a separate process."""
    run_dir = tmp_path_factory.mktemp("cli") / "lora"
    out = run_labkit("train", RECIPE, "--set", f"output_dir={run_dir}", *SMALL)
    assert out.returncode == EXIT_OK, out.stderr[-3000:]
    return run_dir, out


@pytest.mark.slow
def test_train_writes_the_run_directory(lora_run):
    from labkit.monitor import read_scalars
    from labkit.recipe import run_recipe

    run_dir, out = lora_run
    assert "trained 6 steps; last logged loss" in out.stdout
    assert "6/6" in out.stderr  # the progress bar
    result = json.loads((run_dir / "train.json").read_text())
    assert result["steps"] == 6 and result["eos_checked_rows"] > 0 and len(result["data_sha256"]) == 64
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit 2
    assert run_recipe(run_dir).steps == 6 and run_recipe(run_dir).batch_size is not None  # resolved
    assert read_scalars(run_dir / "tensorboard")["step"].max() == 6
    from transformers import AutoTokenizer

    import labkit

    assert AutoTokenizer.from_pretrained(run_dir / "model").chat_template == labkit.load_base()[1].chat_template


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, lora_run, method):
    from labkit.runs import kill_after_checkpoint, max_weight_difference

    if method == "lora":
        reference = lora_run[0]
    else:
        reference = tmp_path / "whole"
        assert run_labkit("train", RECIPE, "--set", f"output_dir={reference}", "--set", "method=full", *SMALL).returncode == 0
    run_dir = tmp_path / "killed"
    args = ["train", RECIPE, "--set", f"output_dir={run_dir}", "--set", f"method={method}", *SMALL]
    killed = kill_after_checkpoint(labkit_command(*args), run_dir, step=2)
    assert killed["returncode"] == -9 and not (run_dir / "model").exists()
    resumed = run_labkit(*args)
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    assert "resumed from checkpoint-" in resumed.stdout
    assert max_weight_difference(reference, run_dir) <= RESUME_TOLERANCE


@pytest.mark.slow
def test_eval_and_merge_a_lora_run(lora_run, tmp_path, capsys):
    run_dir, _ = lora_run
    assert main(["eval", str(run_dir)]) == EXIT_OK
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["trained"]["n"] == report["base"]["n"] == 10
    assert 0 <= report["trained"]["ci_low"] <= report["trained"]["exact_match"] <= report["trained"]["ci_high"] <= 1
    assert report["forgetting"] == pytest.approx(report["trained"]["heldout_loss"] - report["base"]["heldout_loss"])
    assert "| trained |" in capsys.readouterr().out and (run_dir / "eval.md").is_file()
    out = tmp_path / "merged"
    assert main(["merge", str(run_dir), "--out", str(out)]) == EXIT_OK
    merged = json.loads((out / "merge.json").read_text())
    assert merged["max_abs_logit_difference"] <= MERGE_TOLERANCE
    card = (out / "README.md").read_text()
    assert json.loads((run_dir / "train.json").read_text())["data_sha256"] in card and "output_dir:" in card
    assert "| trained |" in card  # the evaluation's metrics
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}


def test_resuming_with_another_recipe_is_refused(tmp_path, capsys):
    from labkit.recipe import load_recipe, save_recipe

    settings = [f"output_dir={tmp_path}", "steps=6", "save_steps=2"]
    save_recipe(load_recipe(RECIPE, settings).resolved()[0], tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    code = main(["train", str(RECIPE), *[a for s in settings for a in ("--set", s)], "--set", "r=4"])
    assert code == EXIT_USAGE
    assert "keys lora_alpha, r differ" in capsys.readouterr().err
