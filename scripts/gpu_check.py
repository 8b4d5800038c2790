"""make gpu-check: the gpu profile's code path on a real GPU that reaches no model hub, as one prepared run.

    python scripts/gpu_check.py prepare DIR      # here: PyPI reachable, no GPU (make gpu-check-prepare)
    python scripts/gpu_check.py run DIR OUT      # there: a CUDA GPU, no hub, no PyPI (make gpu-check)

``prepare`` writes into DIR the wheels the GPU machine lacks, at the versions this book is tested with
(bitsandbytes cut to the CPU and one CUDA library, lm-eval without its task catalogue: both would
otherwise not fit the 64 MiB a device run can carry), and every chapter staged under the ``gpu-check``
profile (Qwen2.5-0.5B's full shape with random weights, built offline; steps cut to minutes).

``run`` reports, into OUT/gpu-check.json and OUT/gpu-check.md:
  * versions: GPU, torch, CUDA, and every library the chapters import;
  * memory: ``estimate_memory`` against ``measure_memory(device="cuda")`` (``torch.cuda.max_memory_allocated``)
    for full fine-tuning, LoRA and QLoRA on :data:`MEMORY_MODELS`, the peak while a model loads kept
    apart from the training step's peak; a row whose estimate exceeds the card is not run, and says so;
  * chapters: every staged chapter executed as plain Python (cell by cell, one process each, a few at
    a time), its time, and the failing cell with the end of its traceback.
Failures are rows of the report, never skipped silently; the exit status is 1 if any row failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import traceback
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEMORY_MODELS = ("SmolLM2-360M", "Qwen2.5-0.5B", "Llama-3.2-1B", "Llama-2-7B")
MEMORY_METHODS = ("full", "lora", "qlora")
MEMORY_SETUP = dict(batch_size=2, seq_len=512, precision="bf16-mixed", attn_implementation="sdpa")
"""One training step's shape for every row: Llama-2-7B is the model of LitGPT's published QLoRA peaks."""
CARD_SHARE = 0.9
"""A row runs only when its estimate (plus the CUDA overhead) is below this share of the card's memory."""

DEVICE_WHEELS = ("transformers", "tokenizers", "datasets", "datasketch", "peft", "trl", "bitsandbytes", "lm-eval",
                 "dill", "multiprocess", "evaluate", "pytablewriter", "dataproperty", "mbstrdecoder", "pathvalidate",
                 "tabledata", "tcolorpy", "typepy", "chardet", "rouge-score", "nltk", "sqlitedict", "word2number",
                 "more-itertools", "optuna", "alembic", "sqlalchemy", "mako", "colorlog")
"""What the GPU machine's image lacks or holds at another version (its package list: the device notes),
with the dependencies of those missing there; each at the version installed beside this script."""
DEVICE_PYTHON = "3.12"
DEVICE_CUDA = "130"
"""The machine's torch is built for CUDA 13.0: the one bitsandbytes library kept."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


# ---- prepare (here) ---------------------------------------------------------------------------------

def slim_wheel(wheel: Path, drop) -> int:
    """Rewrite ``wheel`` without the members for which ``drop(name)`` is true (RECORD kept in step); bytes saved."""
    before = wheel.stat().st_size
    kept = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(kept, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if not drop(line.split(b",")[0].decode()))
            dst.writestr(info, data)
    kept.replace(wheel)
    return before - wheel.stat().st_size


def drop_for_device(name: str) -> bool:
    """bitsandbytes: every native library but the CPU one and CUDA :data:`DEVICE_CUDA`'s; lm-eval: its task catalogue
    (labkit's harness loads only its own task, ``include_defaults=False``)."""
    if name.startswith("bitsandbytes/libbitsandbytes_"):
        return not name.endswith(("_cpu.so", f"_cuda{DEVICE_CUDA}.so"))
    return name.startswith("lm_eval/tasks/") and name.count("/") > 2


def download_wheels(target: Path) -> list[Path]:
    """Each of :data:`DEVICE_WHEELS` at this environment's version, as a wheel for the device's Python."""
    target.mkdir(parents=True, exist_ok=True)
    for name in DEVICE_WHEELS:
        pin = f"{name}=={importlib.metadata.version(name)}"
        platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                  "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platform, "-d", target, pin],
                                 capture_output=True)
        if fetched.returncode:  # a source-only package (sqlitedict, word2number): build its pure-Python wheel here
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", target, pin], check=True)
    wheels = sorted(target.glob("*.whl"))
    for wheel in wheels:
        slim_wheel(wheel, drop_for_device)
    return wheels


def prepare(directory: Path) -> None:
    spec = importlib.util.spec_from_file_location("stage_book", ROOT / "scripts" / "stage_book.py")
    stage_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_book)
    wheels = download_wheels(directory / "wheels")
    stage_book.rehearsal(directory / "chapters", profile="gpu-check")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels ({size:.1f} MiB) and {len(list((directory / 'chapters').rglob('*.ipynb')))} chapters in {directory}")


# ---- run (there) ------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": str(torch.version.cuda),
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}
    for name in ("transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "lm-eval", "pandas", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def memory_row(model: str, method: str, device: str, capacity: int, **setup) -> dict:
    """Estimate and (where it fits in ``capacity`` bytes) measurement of one model x method, as one report row."""
    import torch

    from labkit.memory import estimate_memory, measure_memory

    estimate = estimate_memory(model, method=method, device=device, **setup)
    row = {"model": model, "method": method, "estimate_gib": estimate.total_gib}
    if estimate.total_bytes + estimate.overhead_bytes > CARD_SHARE * capacity:
        row["status"] = f"not run: the estimate exceeds {CARD_SHARE:.0%} of the card's {capacity / 2**30:.0f} GiB"
        return row
    try:
        measured = measure_memory(model, method=method, device=device, **setup)
    except Exception as error:  # a failing row is reported, and fails the run at the end
        row["status"] = f"failed: {type(error).__name__}: {error}"[:400]
        return row
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    row.update(status="ok", measured_gib=measured.total_gib, ratio=estimate.total_bytes / measured.total_bytes,
               load_peak_gib=measured.load_peak_bytes / 2**30,
               terms={t: [estimate.breakdown.get(t, 0) / 2**30, b / 2**30] for t, b in measured.breakdown.items()})
    return row


def shim_display_modules() -> None:
    """Stand-ins for IPython's ``display`` and myst-nb's ``glue`` where they are not installed: a chapter's
    presentation calls print text instead; everything they present is still computed."""
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        display = types.ModuleType("IPython.display")
        display.display = lambda *objects, **_: print(*objects)
        display.HTML = lambda data=None, **_: data
        sys.modules["IPython"] = types.ModuleType("IPython")
        sys.modules["IPython.display"] = display
    try:
        import myst_nb  # noqa: F401
    except ImportError:
        myst_nb = types.ModuleType("myst_nb")
        myst_nb.glue = lambda name, value, display=True: print(f"[glue] {name} = {value!r}") if display else None
        sys.modules["myst_nb"] = myst_nb


def run_chapter(notebook: Path) -> int:
    """Execute a notebook's code cells in order in this process, as plain Python; 1 on the first failing cell."""
    import matplotlib

    matplotlib.use("Agg")
    shim_display_modules()
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{notebook.name}[code cell {index}]", "exec"), namespace)
        except Exception:
            print(f"FAILED {notebook.name} code cell {index}:\n{source[:600]}\n{traceback.format_exc()}", file=sys.stderr)
            return 1
    return 0


def run_chapters(directory: Path, parallel: int, timeout: int) -> list[dict]:
    """Every staged chapter in its own process, ``parallel`` at a time: time, status, the end of a failure's log."""
    def one(notebook: Path) -> dict:
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, Path(__file__).resolve(), "chapter", notebook.resolve()],
                                  capture_output=True, text=True, timeout=timeout, cwd=notebook.parent)
            status, log = ("ok" if done.returncode == 0 else "failed"), done.stderr
        except subprocess.TimeoutExpired as expired:
            status, log = f"failed: over {timeout} s", (expired.stderr or b"").decode(errors="replace")
        row = {"chapter": notebook.stem, "status": status, "seconds": round(time.perf_counter() - start, 1)}
        if status != "ok":
            row["log_tail"] = log[-3000:]
        return row

    notebooks = sorted(directory.rglob("*.ipynb"))
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, notebooks))


def markdown(report: dict) -> str:
    lines = ["# make gpu-check", "", " · ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "## Memory: estimate vs measured (GiB)", "", f"Setup: {report['memory_setup']}", "",
             "| model | method | estimate | measured | estimate / measured | peak while loading | status |", "|---|---|---|---|---|---|---|"]
    for r in report["memory"]:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "" for k in ("estimate_gib", "measured_gib", "ratio", "load_peak_gib")]
        lines.append(f"| {r['model']} | {r['method']} | {' | '.join(cells)} | {r['status']} |")
    lines += ["", "## Chapters (profile gpu-check)", "", "| chapter | seconds | status |", "|---|---|---|"]
    lines += [f"| {r['chapter']} | {r['seconds']} | {r['status']} |" for r in report["chapters"]]
    for r in report["chapters"]:
        if r["status"] != "ok":
            lines += ["", f"### {r['chapter']}", "", "```", r["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def run(directory: Path, out: Path, parts: list[str], parallel: int, timeout: int) -> int:
    import torch

    from labkit.profiles import get_profile, model_path

    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU; on a CPU, make rehearsal runs the gpu profile's code path")
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda"
    report = {"versions": versions(), "memory_setup": MEMORY_SETUP, "memory": [], "chapters": []}
    if "memory" in parts:
        capacity = torch.cuda.get_device_properties(0).total_memory
        report["memory"] = [memory_row(m, k, device, capacity, **MEMORY_SETUP) for m in MEMORY_MODELS for k in MEMORY_METHODS]
    if "chapters" in parts:
        model_path(get_profile("gpu-check"))  # build the random-weight model once, before chapters run in parallel
        report["chapters"] = run_chapters(directory / "chapters", parallel, timeout)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu-check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [r for r in report["memory"] + report["chapters"] if r["status"].startswith("failed")]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare").add_argument("directory", type=Path)
    runner = sub.add_parser("run")
    runner.add_argument("directory", type=Path)
    runner.add_argument("out", type=Path)
    runner.add_argument("--parts", nargs="+", default=["memory", "chapters"], choices=["memory", "chapters"])
    runner.add_argument("--parallel", type=int, default=4, help="chapters at a time (one GPU, 16 cores)")
    runner.add_argument("--timeout", type=int, default=300, help="seconds one chapter may take")
    sub.add_parser("chapter").add_argument("notebook", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.directory)
        return 0
    if args.command == "chapter":
        return run_chapter(args.notebook)
    return run(args.directory, args.out, args.parts, args.parallel, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
