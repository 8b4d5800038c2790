"""The book's structure: every chapter in the table of contents exists, and every notebook is in it."""

import importlib.util
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
def test_notebook_ends_with_a_measured_summary(path):
    nb = jupytext.read(path)
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("## ")]
    assert headings and headings[-1].startswith("## What we measured")
    assert nb.cells[-1].cell_type == "code"


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
    assert set(modules) == {"labkit"} | {m.name for m in pkgutil.walk_packages(labkit.__path__, "labkit.")}
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
