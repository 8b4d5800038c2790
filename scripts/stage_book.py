"""Stage the book for building: copy prose and config, convert MyST notebooks to .ipynb.

Usage: python scripts/stage_book.py OUT_DIR            # the book
       python scripts/stage_book.py --rehearsal OUT_DIR  # only the chapters, set to the gpu-rehearsal profile

Only pages listed in _toc.yml are staged; the executed .ipynb files live under OUT_DIR (git-ignored).
The API reference page (``book/api.md``) gets one autodoc section per labkit module appended, so
every module is documented from its docstrings without a hand-kept list.
"""

import pkgutil
import shutil
import sys
from pathlib import Path

import jupytext
import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files(toc: dict) -> list[str]:
    """Every `file:` entry of a jupyter-book 1.x table of contents, in reading order."""
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


API_PAGE = "book/api"


def labkit_modules() -> list[str]:
    """Every module of the labkit package, packages first within their folder, in name order."""
    import labkit

    names = ["labkit"] + [m.name for m in pkgutil.walk_packages(labkit.__path__, "labkit.")]
    return sorted(n for n in names if n.rsplit(".", 1)[-1] != "__main__")


def api_sections() -> str:
    """MyST for one autodoc section per labkit module."""
    parts = []
    for name in labkit_modules():
        parts.append(f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n   :members:\n   :ignore-module-all:\n   :member-order: bysource\n```\n")
    return "\n".join(parts)


REHEARSAL_PROFILE = "gpu-rehearsal"
REHEARSAL_OVERRIDES = {
    "ch01_base_models": dict(VOCAB_SIZES=[512], TOKENIZER_SAMPLE_CHARS=100_000, PRETRAIN_STEPS=2),
    "ch02_preparing_data": dict(N_PER_TASK=8, PACKING_EXAMPLES=16, AUG_EXAMPLES_PER_TASK=4, AUG_EPOCHS=1, AUG_TEST_PER_TASK=2),
    "ch03_will_it_fit": dict(MEASURE_BATCH=1, MEASURE_SEQ_LEN=32),
    "ch04_did_it_work": dict(OVERFIT_EXAMPLES=10, HELDOUT_CHARS=2000),
    "ch06_lora": dict(RANKS=[1, 8]),
    "ch08_lora_variants": dict(HIGH_R=16),
}
"""The knobs, beyond the profile's sizes, that a chapter sets for itself: cut for the rehearsal's CPU budget."""


def rehearsal_notebook(source: Path):
    """The chapter as a notebook whose parameters cell ends by choosing the rehearsal profile (and smaller knobs)."""
    nb = jupytext.read(source)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    overrides = {"PROFILE": REHEARSAL_PROFILE, **REHEARSAL_OVERRIDES.get(source.stem, {})}
    unknown = [k for k in overrides if not any(line.startswith(f"{k} =") for line in cell.source.splitlines())]
    if unknown:
        sys.exit(f"{source.name}: rehearsal overrides {unknown} name no knob of its parameters cell")
    cell.source += "\n# gpu-rehearsal (scripts/stage_book.py)\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    return nb


def rehearsal(out: Path) -> None:
    """Stage every chapter of _toc.yml, set to the rehearsal profile, for execution (never rendered)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    chapters = [e for e in toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())) if e.startswith("notebooks/")]
    for entry in chapters:
        jupytext.write(rehearsal_notebook(ROOT / f"{entry}.md"), out / f"{entry}.ipynb")


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, out / name)
    for entry in toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())):
        source = ROOT / f"{entry}.md"
        if not source.exists():
            sys.exit(f"_toc.yml lists {entry!r}, but {source.relative_to(ROOT)} does not exist")
        target = out / f"{entry}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.startswith("notebooks/"):  # chapters: MyST notebooks, executed later by nbmake
            jupytext.write(jupytext.read(source), target.with_suffix(".ipynb"))
        elif entry == API_PAGE:
            target.write_text(source.read_text().rstrip() + "\n\n" + api_sections())
        else:
            shutil.copy(source, target)
    for extra in ("book/images",):
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, out / extra)


if __name__ == "__main__":
    if sys.argv[1] == "--rehearsal":
        rehearsal(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]))
