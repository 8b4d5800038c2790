"""Stage the book for building: copy prose and config, convert MyST notebooks to .ipynb.

Usage: python scripts/stage_book.py OUT_DIR

Only pages listed in _toc.yml are staged; the executed .ipynb files live under OUT_DIR (git-ignored).
"""

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
        else:
            shutil.copy(source, target)
    for extra in ("book/images",):
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, out / extra)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
