"""Stage the book for building: copy prose and config, convert MyST notebooks to .ipynb.

Usage: python scripts/stage_book.py OUT_DIR              # the book
       python scripts/stage_book.py --rehearsal OUT_DIR  # only the chapters, set to the gpu-rehearsal profile
       python scripts/stage_book.py --publish OUT_DIR    # after execution: the notebooks and wheel to publish

Only pages listed in _toc.yml are staged; the executed .ipynb files live under OUT_DIR (git-ignored).
The API reference page (``book/api.md``) gets one autodoc section per labkit module appended, so
every module is documented from its docstrings without a hand-kept list.

Every staged chapter starts with a setup cell that installs labkit only where it is missing (Colab),
and its title is followed by an "Open in Colab" badge and download links. The addresses come from
``_config.yml`` (``repository``, ``html.baseurl``, ``publish``), set once there.
"""

import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
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


PUBLISHED = "_published"
"""Folder under the staged book whose contents Sphinx copies to the site's root (``html_extra_path``)."""
SETUP_TAG = "setup"
EXTRAS = "train,eval,notebook"
"""The extras a chapter imports beyond labkit's core: training, evaluation, and myst-nb's ``glue``."""


def wheel_name() -> str:
    """The file name of labkit's wheel, from pyproject.toml's version."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"labkit-{version}-py3-none-any.whl"


def addresses(config: dict | None = None) -> dict[str, str]:
    """Where the book is published, derived from ``_config.yml``: the site, the wheel, and Colab's prefix
    for a notebook on the branch that holds the built site."""
    config = config or yaml.safe_load((ROOT / "_config.yml").read_text())
    site = config["html"]["baseurl"].rstrip("/")
    repository = config["repository"]["url"].rstrip("/")
    owner_repo = repository.removeprefix("https://github.com/")
    if owner_repo == repository or owner_repo.count("/") != 1:
        raise ValueError(f"_config.yml: repository.url must be https://github.com/OWNER/REPO (Colab opens GitHub files); got {repository!r}")
    return {"site": site, "wheel": f"{site}/{wheel_name()}",
            "colab": f"https://colab.research.google.com/github/{owner_repo}/blob/{config['publish']['site_branch']}"}


def setup_source(wheel_url: str) -> str:
    """The first code cell of every staged chapter: installs labkit only where it cannot be imported."""
    return (
        "# Where labkit is missing (e.g. on Colab), install it with what the chapters import; elsewhere, nothing.\n"
        "import importlib.util, subprocess, sys\n"
        "\n"
        'if importlib.util.find_spec("labkit") is None:\n'
        f'    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "labkit[{EXTRAS}] @ {wheel_url}"])'
    )


def badge_markdown(stem: str, urls: dict[str, str]) -> str:
    """The line under a chapter's title: Colab badge, the executed notebook, labkit's wheel."""
    return (f"[![Open in Colab](../book/images/open-in-colab.svg)]({urls['colab']}/notebooks/{stem}.ipynb) "
            f'<a href="{stem}.ipynb" download>Download the executed notebook</a> · '
            f'<a href="../{wheel_name()}">labkit\'s wheel</a>')


def chapter_notebook(source: Path, urls: dict[str, str] | None = None):
    """The chapter as a notebook: the setup cell first, the badge line under the title."""
    urls = urls or addresses()
    nb = jupytext.read(source)
    title_cell = nb.cells[0]
    title, _, rest = title_cell.source.partition("\n")
    if title_cell.cell_type != "markdown" or not title.startswith("# "):
        sys.exit(f"{source.name}: the first cell must be markdown starting with the '# ' title")
    title_cell.source = f"{title}\n\n{badge_markdown(source.stem, urls)}\n{rest}"
    setup = nbformat.v4.new_code_cell(setup_source(urls["wheel"]), metadata={"tags": [SETUP_TAG]})
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code, setup)
    return nb


def publish(out: Path) -> None:
    """After execution: copy the executed notebooks and build labkit's wheel into ``out/_published``,
    which the site carries at its root (the notebooks beside their pages)."""
    target = out / PUBLISHED
    if target.exists():
        shutil.rmtree(target)
    (target / "notebooks").mkdir(parents=True)
    for notebook in sorted((out / "notebooks").glob("*.ipynb")):
        shutil.copy(notebook, target / "notebooks" / notebook.name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", target, ROOT],
                   check=True)
    if not (target / wheel_name()).exists():
        sys.exit(f"pip wheel did not write {wheel_name()} to {target}")


REHEARSAL_PROFILE = "gpu-rehearsal"
REHEARSAL_OVERRIDES = {
    "ch01_base_models": dict(VOCAB_SIZES=[512], TOKENIZER_SAMPLE_CHARS=100_000, PRETRAIN_STEPS=2, HELDOUT_CHARS=2000),
    "ch02_preparing_data": dict(N_PER_TASK=8, PACKING_EXAMPLES=16, AUG_EXAMPLES_PER_TASK=4, AUG_EPOCHS=1, AUG_TEST_PER_TASK=2),
    "ch03_will_it_fit": dict(MEASURE_BATCH=1, MEASURE_SEQ_LEN=32),
    "ch04_did_it_work": dict(OVERFIT_EXAMPLES=10, HELDOUT_CHARS=2000),
    "ch06_lora": dict(RANKS=[1, 8]),
    "ch08_lora_variants": dict(HIGH_R=16),
    "ch14_memory_and_stability": dict(LEVER_BATCH=2, LEVER_SEQ_LEN=16, ACCUMULATION=2, TIMED_STEPS=1),
    "ch15_watching_and_tuning": dict(N_TRIALS=2),
    "ch17_reward_models": dict(N_SAMPLES=2),
    "ch19_kto_orpo_and_one_table": dict(RATE_FACTORS=[1 / 30]),
    "ch20_reinforcement_learning": dict(NUM_GENERATIONS=4, RATES=[1e-4], DPO_RATES=[1e-5]),
    "ch22_long_context": dict(ORIGINAL_CONTEXT=128, FACTOR=2, EVAL_FACTORS=[1, 2]),
    "ch25_adapters_as_modules": dict(MERGE_WEIGHTS=[1.0], DENSITIES=[0.5], ROUTER_RATES=[3e-2], SWITCH_REPEATS=3),
}
"""The knobs, beyond the profile's sizes, that a chapter sets for itself: cut for the rehearsal's CPU budget
(and for ``make gpu-check``'s minutes on a GPU)."""


SLOWEST_FIRST = ("ch09_prompts_prefixes_ia3", "ch10_comparison", "ch08_lora_variants", "ch07_qlora", "ch21_reward_hacking",
                 "ch04_did_it_work", "ch01_base_models", "ch24_many_tasks", "ch25_adapters_as_modules", "ch05_full_finetuning",
                 "ch06_lora", "ch02_preparing_data", "ch22_long_context", "ch19_kto_orpo_and_one_table",
                 "ch20_reinforcement_learning", "ch26_pitfalls", "ch18_dpo", "ch12_precision", "ch11_schedules_and_batches")
"""The chapters that take longest, longest first (CI's chapter_times.xml). Two workers that each take the
next chapter when one ends finish close together only if the long ones start first."""


def execution_order(notebooks: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The staged notebooks under ``notebooks``: :data:`SLOWEST_FIRST`, then the others in file order."""
    staged = {p.stem: p for p in sorted(notebooks.glob("*.ipynb")) if p.stem not in skip}
    first = [staged.pop(stem) for stem in SLOWEST_FIRST if stem in staged]
    return first + list(staged.values())


def rehearsal_notebook(source: Path, profile: str = REHEARSAL_PROFILE):
    """The chapter as a notebook whose parameters cell ends by choosing ``profile`` (and the smaller knobs
    of :data:`REHEARSAL_OVERRIDES`)."""
    nb = chapter_notebook(source)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    overrides = {"PROFILE": profile, **REHEARSAL_OVERRIDES.get(source.stem, {})}
    unknown = [k for k in overrides if not any(line.startswith(f"{k} =") for line in cell.source.splitlines())]
    if unknown:
        sys.exit(f"{source.name}: rehearsal overrides {unknown} name no knob of its parameters cell")
    cell.source += f"\n# {profile} (scripts/stage_book.py)\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    return nb


def rehearsal(out: Path, profile: str = REHEARSAL_PROFILE) -> None:
    """Stage every chapter of _toc.yml, set to ``profile`` (the rehearsal's by default), for execution (never rendered)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    chapters = [e for e in toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())) if e.startswith("notebooks/")]
    for entry in chapters:
        jupytext.write(rehearsal_notebook(ROOT / f"{entry}.md", profile), out / f"{entry}.ipynb")


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
            jupytext.write(chapter_notebook(source), target.with_suffix(".ipynb"))
        elif entry == API_PAGE:
            target.write_text(source.read_text().rstrip() + "\n\n" + api_sections())
        else:
            shutil.copy(source, target)
    for extra in ("book/images", "book/_ext"):
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, out / extra)


if __name__ == "__main__":
    if sys.argv[1] == "--rehearsal":
        rehearsal(Path(sys.argv[2]))
    elif sys.argv[1] == "--order":  # --order DIR [STEM ...]: the notebooks to execute, the STEMs left out
        print(" ".join(str(p) for p in execution_order(Path(sys.argv[2]), tuple(sys.argv[3:]))))
    elif sys.argv[1] == "--publish":
        publish(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]))
