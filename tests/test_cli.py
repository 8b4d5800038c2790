import json
import subprocess
import sys

import pytest

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
    ([], ["fit", "data"]),
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
