"""Stage the book for building: copy prose and config, convert MyST notebooks to .ipynb.

Usage: python scripts/stage_book.py OUT_DIR

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
    main(Path(sys.argv[1]))
