"""scripts/gpu_check.py: the parts of make gpu-check that run without a GPU (wheels, chapter runner, report rows)."""

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from labkit.paths import BASE_DIR

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize("name, dropped", [
    ("bitsandbytes/libbitsandbytes_cuda128.so", True),
    ("bitsandbytes/libbitsandbytes_rocm72.so", True),
    (f"bitsandbytes/libbitsandbytes_cuda{gpu_check.DEVICE_CUDA}.so", False),
    ("bitsandbytes/libbitsandbytes_cpu.so", False),
    ("bitsandbytes/functional.py", False),
    ("lm_eval/tasks/mmlu/default.yaml", True),
    ("lm_eval/tasks/__init__.py", False),
    ("lm_eval/evaluator.py", False),
])
def test_what_the_device_wheels_leave_out(name, dropped):
    assert gpu_check.drop_for_device(name) is dropped


def test_slimming_a_wheel_removes_members_and_their_record_lines(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    record = "pkg/__init__.py,sha256=a,1\npkg/big.so,sha256=b,9\npkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/__init__.py", "x = 1\n")
        zf.writestr("pkg/big.so", b"\0" * 100_000)
        zf.writestr("pkg-1.0.dist-info/RECORD", record)
    saved = gpu_check.slim_wheel(wheel, lambda name: name.endswith(".so"))
    with zipfile.ZipFile(wheel) as zf:
        assert zf.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert zf.read("pkg-1.0.dist-info/RECORD").decode() == "pkg/__init__.py,sha256=a,1\npkg-1.0.dist-info/RECORD,,\n"
    assert saved > 0


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t")] + [nbformat.v4.new_code_cell(s) for s in sources])
    path.write_text(json.dumps(nb))
    return path


def test_a_chapter_runs_as_plain_python_with_glue_and_display_where_they_are_missing(tmp_path, monkeypatch, capsys):
    for name in ("myst_nb", "IPython", "IPython.display"):  # None in sys.modules makes the import fail
        monkeypatch.setitem(sys.modules, name, None)
    path = notebook(tmp_path / "ok.ipynb", "from myst_nb import glue\nfrom IPython.display import HTML, display\nx = 6 * 7",
                    "glue('answer', x)\ndisplay(HTML('<b>shown</b>'))")
    assert gpu_check.run_chapter(path) == 0
    out = capsys.readouterr().out
    assert "[glue] answer = 42" in out and "<b>shown</b>" in out


def test_a_failing_cell_is_named_with_its_traceback(tmp_path, capsys):
    path = notebook(tmp_path / "bad.ipynb", "x = 1", "y = x / 0", "z = 2")
    assert gpu_check.run_chapter(path) == 1
    err = capsys.readouterr().err
    assert "bad.ipynb code cell 1" in err and "ZeroDivisionError" in err


def test_run_chapters_reports_each_chapters_status_and_a_failures_log(tmp_path, monkeypatch):
    (tmp_path / "chapters").mkdir()
    notebook(tmp_path / "chapters" / "a_ok.ipynb", "x = 1")
    notebook(tmp_path / "chapters" / "b_bad.ipynb", "raise ValueError('planted')")
    # As make gpu-check runs it: the script and the chapters named by paths relative to the repository.
    monkeypatch.setattr(gpu_check, "__file__", "scripts/gpu_check.py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gpu_check.py").symlink_to(ROOT / "scripts" / "gpu_check.py")
    rows = gpu_check.run_chapters(Path("chapters"), parallel=2, timeout=120)
    assert [(r["chapter"], r["status"]) for r in rows] == [("a_ok", "ok"), ("b_bad", "failed")]
    assert "planted" in rows[1]["log_tail"] and "log_tail" not in rows[0]


@pytest.mark.slow
def test_a_memory_row_compares_estimate_and_measurement(tmp_path):
    setup = dict(batch_size=1, seq_len=32, precision="fp32")
    row = gpu_check.memory_row(str(BASE_DIR / "config.json"), "lora", "cpu", capacity=2**40, **setup)
    assert row["status"] == "ok" and row["measured_gib"] > 0
    assert row["ratio"] == pytest.approx(row["estimate_gib"] / row["measured_gib"])
    assert set(row["terms"]) >= {"weights", "gradients", "optimizer_states", "activations"}
    assert "| lora |" in gpu_check.markdown({"versions": {}, "memory_setup": setup, "memory": [row], "chapters": []})


def test_a_row_whose_estimate_exceeds_the_card_is_reported_not_run():
    row = gpu_check.memory_row("Llama-2-7B", "full", "cuda", capacity=8 * 2**30, **gpu_check.MEMORY_SETUP)
    assert row["status"].startswith("not run") and "measured_gib" not in row


def test_the_gpu_check_chapters_are_staged_under_the_gpu_check_profile(tmp_path):
    stage = importlib.util.spec_from_file_location("stage_book", ROOT / "scripts" / "stage_book.py")
    stage_book = importlib.util.module_from_spec(stage)
    stage.loader.exec_module(stage_book)
    nb = stage_book.rehearsal_notebook(ROOT / "notebooks" / "ch06_lora.md", profile="gpu-check")
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    namespace = {}
    exec(cell.source, namespace)
    assert namespace["PROFILE"] == "gpu-check"
