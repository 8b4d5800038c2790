"""The book's structure: every chapter in the table of contents exists, and every notebook is in it."""

import importlib.util
import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("stage_book", ROOT / "scripts" / "stage_book.py")
stage_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_book)

TOC = stage_book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.md"))


def test_every_toc_entry_has_a_source_file():
    missing = [entry for entry in TOC if not (ROOT / f"{entry}.md").exists()]
    assert not missing, f"_toc.yml lists pages with no .md file: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = {entry for entry in TOC if entry.startswith("notebooks/")}
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert NOTEBOOKS and not unlisted, f"notebooks missing from _toc.yml: {unlisted}"


def test_toc_files_reads_nested_parts():
    toc = {"root": "a", "parts": [{"chapters": [{"file": "b", "sections": [{"file": "c"}]}]}, {"chapters": [{"file": "d"}]}]}
    assert stage_book.toc_files(toc) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_myst_with_one_parameters_cell_first(path):
    nb = jupytext.read(path)
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "myst"
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'; expected exactly 1"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    assert "PROFILE = None" in tagged[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ends_with_measured_takeaways_then_exercises_with_hidden_solutions(path):
    """What we measured (a summary, then takeaways built from results), then 2-3 exercises solved in hidden cells."""
    nb = jupytext.read(path)
    heading_at = {line: i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  for line in c.source.splitlines() if line.startswith("## ")}
    assert list(heading_at)[-2:] == ["## What we measured", "## Exercises"], \
        f"{path.name}: the last two sections are '## What we measured' and '## Exercises'"
    measured, exercises = heading_at["## What we measured"], heading_at["## Exercises"]
    shown = [c for c in nb.cells[measured:exercises] if c.cell_type == "code" and "takeaways(" in c.source]
    assert shown, f"{path.name}: 'What we measured' shows takeaways(...) computed from the chapter's results"
    assert "hide-input" in shown[0].metadata.get("tags", []), \
        f"{path.name}: the takeaways cell is tagged hide-input (the reader sees the sentences, the code behind a toggle)"
    asked = re.findall(r"^(\d+)\. \*\*", nb.cells[exercises].source, flags=re.M)
    assert 2 <= len(asked) <= 3 and asked == [str(i + 1) for i in range(len(asked))], \
        f"{path.name}: 2-3 exercises numbered '1. **title**', found {asked}"
    solutions = [c for c in nb.cells[exercises:] if c.cell_type == "code"]
    assert all("hide-cell" in c.metadata.get("tags", []) for c in solutions), \
        f"{path.name}: every solution after '## Exercises' is a code cell tagged hide-cell"
    solved = sorted({n for c in solutions for n in re.findall(r"^# Solution (\d+)", c.source, flags=re.M)})
    assert solved == asked, f"{path.name}: solutions {solved} for exercises {asked} (each opens '# Solution N')"


def test_staging_converts_chapters_and_copies_prose(tmp_path):
    stage_book.main(tmp_path / "site")
    for entry in TOC:
        suffix = ".ipynb" if entry.startswith("notebooks/") else ".md"
        assert (tmp_path / "site" / f"{entry}{suffix}").exists(), entry
    assert (tmp_path / "site" / "_toc.yml").exists()


def test_the_api_page_documents_every_labkit_module_once():
    import pkgutil

    import labkit

    modules = stage_book.labkit_modules()
    assert "labkit.eval.paired" in modules and "labkit.vocabulary" in modules
    submodules = {m.name for m in pkgutil.walk_packages(labkit.__path__, "labkit.")} - {"labkit.__main__"}  # a program
    assert set(modules) == {"labkit"} | submodules
    sections = stage_book.api_sections()
    for name in modules:
        assert sections.count(f".. automodule:: {name}\n") == 1, name


def test_rehearsal_staging_sets_every_chapter_to_the_rehearsal_profile(tmp_path):
    stage_book.rehearsal(tmp_path / "rehearsal")
    staged = sorted((tmp_path / "rehearsal" / "notebooks").glob("*.ipynb"))
    assert [p.stem for p in staged] == [p.stem for p in NOTEBOOKS]
    for path in staged:
        (cell,) = [c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", [])]
        namespace = {}
        exec(cell.source, namespace)  # parameters cells are plain assignments
        assert namespace["PROFILE"] == "gpu-rehearsal", path.name
        for knob, value in stage_book.REHEARSAL_OVERRIDES.get(path.stem, {}).items():
            assert namespace[knob] == value, (path.name, knob)


def test_a_rehearsal_override_must_name_an_existing_knob(tmp_path, monkeypatch):
    monkeypatch.setitem(stage_book.REHEARSAL_OVERRIDES, "ch05_full_finetuning", {"NO_SUCH_KNOB": 1})
    with pytest.raises(SystemExit, match="NO_SUCH_KNOB"):
        stage_book.rehearsal_notebook(ROOT / "notebooks" / "ch05_full_finetuning.md")


def test_staged_chapters_start_with_the_setup_cell_and_carry_the_badge_under_the_title(tmp_path):
    urls = stage_book.addresses()
    nb = stage_book.chapter_notebook(ROOT / "notebooks" / "ch05_full_finetuning.md")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata["tags"] == [stage_book.SETUP_TAG] and "parameters" in code[1].metadata["tags"]
    title, blank, badge = nb.cells[0].source.splitlines()[:3]
    assert title.startswith("# ") and blank == ""
    assert f"({urls['colab']}/notebooks/ch05_full_finetuning.ipynb)" in badge
    assert 'href="ch05_full_finetuning.ipynb"' in badge and f'href="../{stage_book.wheel_name()}"' in badge


def test_the_setup_cell_does_nothing_where_labkit_imports(monkeypatch):
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"the setup cell ran {args}")

    monkeypatch.setattr(subprocess, "check_call", refuse)
    exec(stage_book.setup_source("https://example.org/labkit.whl"), {})


def test_the_setup_cell_installs_the_configured_wheel_where_labkit_is_missing(monkeypatch):
    import importlib.util
    import subprocess
    import sys

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "labkit" else real_find_spec(name, *a))
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda args: calls.append(args))
    urls = stage_book.addresses()
    exec(stage_book.setup_source(urls["wheel"]), {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"labkit[{stage_book.EXTRAS}] @ {urls['wheel']}"]]


def test_the_setup_cell_installs_every_extra_a_chapter_imports_from():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("<")[0].strip() for e in stage_book.EXTRAS.split(",") for req in extras[e]}
    assert {"peft", "trl", "bitsandbytes", "lm-eval", "matplotlib", "myst-nb"} <= names


def test_addresses_come_from_the_config_and_refuse_a_repository_colab_cannot_open():
    config = {"html": {"baseurl": "https://example.org/book/"}, "repository": {"url": "https://github.com/o/r"},
              "publish": {"site_branch": "pages"}}
    urls = stage_book.addresses(config)
    assert urls == {"site": "https://example.org/book", "wheel": f"https://example.org/book/{stage_book.wheel_name()}",
                    "colab": "https://colab.research.google.com/github/o/r/blob/pages"}
    config["repository"]["url"] = "https://gitlab.com/o/r"
    with pytest.raises(ValueError, match="github.com/OWNER/REPO"):
        stage_book.addresses(config)


def test_the_slowest_chapters_named_for_scheduling_are_chapters():
    chapters = {Path(entry).name for entry in TOC if entry.startswith("notebooks/")}
    assert set(stage_book.SLOWEST_FIRST) <= chapters


def test_execution_order_starts_with_the_slowest_and_keeps_every_other_notebook(tmp_path):
    names = ["ch00_the_lab", "ch03_will_it_fit", "ch07_qlora", "ch10_comparison", "ch99_new"]
    for name in names:
        (tmp_path / f"{name}.ipynb").touch()
    order = [p.stem for p in stage_book.execution_order(tmp_path, skip=("ch00_the_lab",))]
    assert order == ["ch10_comparison", "ch07_qlora", "ch03_will_it_fit", "ch99_new"]


BIB = (ROOT / "references.bib").read_text()
BIB_ENTRIES = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", BIB, flags=re.S))
PAGES = [ROOT / f"{entry}.md" for entry in TOC]
CITE_ROLE = re.compile(r"\{cite(?::[pt])?\}`([^`]+)`")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def prose(path: Path) -> str:
    """A page's text without its fenced blocks (code cells, directives' code)."""
    return FENCE.sub("", path.read_text())


def uncited_references(text: str) -> list[str]:
    """Author-year references written out instead of cited: ``Hu et al. 2021``, ``Li & Liang (2021)``,
    or a single author of the bibliography followed by a year."""
    text = CITE_ROLE.sub("", text)
    first_authors = {re.search(r"author = \{\{?([^,}]+)", body).group(1) for body in BIB_ENTRIES.values()}
    single = "|".join(sorted(re.escape(a) for a in first_authors))
    pattern = (r"\b[A-Z][\w'-]+(?:\s+et\s+al\.|\s+(?:and|&)\s+[A-Z][\w'-]+)(?:'s)?,?\s+\(?(?:19|20)\d\d\b"
               rf"|\b(?:{single}),?\s+\(?(?:19|20)\d\d\b")
    return [" ".join(found.split()) for found in re.findall(pattern, text)]


@pytest.mark.parametrize("text, found", [
    ("LoRA (Hu et al. 2021) freezes", ["Hu et al. 2021"]),
    ("prefix tuning (Li & Liang, 2021)", ["Li & Liang, 2021"]),
    ("scaled as Kalajdzievski 2023 suggests", ["Kalajdzievski 2023"]),
    ("LoRA {cite:p}`hu2021lora` freezes; {cite:t}`li2021prefix` learn", []),
    ("Copyright 2026, version 5.24", []),
    ("as Lester\net al. (2021) train", ["Lester et al. (2021"]),
])
def test_uncited_references_finds_author_year_text_outside_cite_roles(text, found):
    assert uncited_references(text) == found


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.stem)
def test_every_paper_a_page_names_is_cited_from_the_bibliography(path):
    text = prose(path)
    assert not uncited_references(text), f"{path.name}: cite these with {{cite:p}}`key` (references.bib): {uncited_references(text)}"
    keys = {k.strip() for group in CITE_ROLE.findall(text) for k in group.split(",")}
    unknown = sorted(keys - set(BIB_ENTRIES))
    assert not unknown, f"{path.name} cites keys missing from references.bib: {unknown}"


def test_every_bibliography_entry_links_to_the_paper():
    no_url = [key for key, body in BIB_ENTRIES.items() if not re.search(r"url = \{https://", body)]
    assert BIB_ENTRIES and not no_url, f"references.bib entries without a url: {no_url}"
