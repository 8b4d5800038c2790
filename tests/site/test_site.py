"""The built site tested as a reader meets it: every chapter page's Colab badge, notebook download and wheel
link lead to files the site carries, and every page, opened offline in a browser, renders its math, figures,
tables and links."""

import importlib.util
import json
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from pages import broken_links, check_page, missing_outputs, notebook_figures_and_tables, site_pages

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("stage_book", ROOT / "scripts" / "stage_book.py")
stage_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_book)

CHAPTERS = [e.removeprefix("notebooks/") for e in stage_book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
            if e.startswith("notebooks/")]
PAGES = ["index.html"] + [f"{e}.html" for e in stage_book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))]
"""Every page a reader opens, as paths in the site: the index (a redirect to the first page) and each _toc.yml entry."""
URLS = stage_book.addresses()
SCREENSHOTS = ("ch06_lora", "ch10_comparison", "ch20_reinforcement_learning")
"""Chapters whose full-page screenshots the site build leaves in ``build/site/screenshots`` (CI keeps them)."""


class Links(HTMLParser):
    """Every href, img src and script src of a page."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.images, self.scripts = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def links(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


def site_file(html: Path, url: str) -> Path:
    """The file a published absolute URL names inside the built site."""
    path = urlparse(url).path.removeprefix(urlparse(URLS["site"]).path).lstrip("/")
    return html / path


@pytest.mark.parametrize("stem", CHAPTERS)
def test_the_colab_badge_opens_the_executed_notebook_the_site_carries(html, stem):
    page = html / "notebooks" / f"{stem}.html"
    found = links(page)
    colab = [h for h in found.hrefs if h.startswith("https://colab.research.google.com/")]
    assert colab == [f"{URLS['colab']}/notebooks/{stem}.ipynb"], f"{page.name}: Colab links {colab}"
    # Colab opens the file at that path on the branch that holds this site: it must be in the site.
    notebook = html / "notebooks" / f"{stem}.ipynb"
    assert notebook.is_file(), f"the site lacks {notebook.relative_to(html)}"
    badge = [src for src in found.images if src.endswith("open-in-colab.svg")]
    assert badge and (page.parent / badge[0]).resolve().is_file(), f"{page.name}: badge image {badge} missing"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_the_download_link_is_the_executed_notebook_with_the_setup_cell_first(html, stem):
    page = html / "notebooks" / f"{stem}.html"
    assert f"{stem}.ipynb" in links(page).hrefs, f"{page.name}: no link to {stem}.ipynb"
    nb = json.loads((page.parent / f"{stem}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code), f"{stem}.ipynb has cells that never ran"
    assert sum(len(c["outputs"]) for c in code) > 0
    setup = "".join(code[0]["source"])
    assert stage_book.SETUP_TAG in code[0]["metadata"].get("tags", []) and URLS["wheel"] in setup
    assert "parameters" in code[1]["metadata"].get("tags", [])


@pytest.mark.parametrize("stem", CHAPTERS)
def test_the_wheel_link_and_the_setup_cells_address_name_one_wheel_in_the_site(html, stem):
    page = html / "notebooks" / f"{stem}.html"
    wheels = [h for h in links(page).hrefs if h.endswith(".whl")]
    assert len(wheels) == 1, f"{page.name}: wheel links {wheels}"
    linked = (page.parent / wheels[0]).resolve()
    assert linked == site_file(html, URLS["wheel"]).resolve(), (linked, URLS["wheel"])
    with zipfile.ZipFile(linked) as wheel:
        names = wheel.namelist()
    assert "labkit/__init__.py" in names and "labkit/assets/base/model.safetensors" in names


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_script_is_served_by_the_site_math_included(html, stem):
    """A reader offline (or behind a firewall) sees rendered math: no script comes from another host."""
    page = html / "notebooks" / f"{stem}.html"
    scripts = links(page).scripts
    remote = [src for src in scripts if urlparse(src).scheme or src.startswith("//")]
    assert not remote, f"{page.name} loads scripts from elsewhere: {remote}"
    missing = [src for src in scripts if not (page.parent / urlparse(src).path).resolve().is_file()]
    assert not missing, f"{page.name}: scripts the site lacks: {missing}"
    if 'class="math' in page.read_text():
        assert any(src.endswith("mathjax/tex-chtml.js") for src in scripts), f"{page.name} has math and loads no MathJax"


def test_the_math_renderer_is_in_the_site(html):
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert 'class="math' in (html / "notebooks" / "ch06_lora.html").read_text()  # a page the check above covers


@pytest.fixture(scope="session")
def checked(html, browser):
    """``checked("notebooks/ch06_lora.html")``: :func:`pages.check_page` of that page, run once per session
    (it also saves the screenshot of a chapter in :data:`SCREENSHOTS`)."""
    done = {}

    def check(name: str):
        if name not in done:
            stem = Path(name).stem
            screenshot = html.parent.parent / "screenshots" / f"{stem}.png" if stem in SCREENSHOTS else None
            if screenshot is not None:
                screenshot.unlink(missing_ok=True)  # the file the test finds is this run's
            done[name] = check_page(browser, html / name, screenshot)
        return done[name]

    return check


def test_the_pages_checked_are_every_page_of_the_site(html):
    assert [str(p.relative_to(html)) for p in site_pages(html)] == sorted(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_in_a_browser_offline_every_page_loads_without_errors_and_renders_its_math(checked, name):
    """No script error or console.error, no file the site lacks, every formula typeset by MathJax (no raw
    delimiter left in the text), every image loaded."""
    problems = checked(name).problems
    assert not problems, f"{name}: {len(problems)} problems:\n" + "\n".join(problems)


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_figure_and_table_of_the_executed_notebook_is_on_its_page(html, checked, stem):
    """The page's cell outputs hold at least the notebook's image outputs as ``img`` and its HTML tables as ``table``."""
    assert not missing_outputs(checked(f"notebooks/{stem}.html"), html / "notebooks" / f"{stem}.ipynb")


@pytest.mark.parametrize("outputs, figures, tables", [
    ([{"data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}], 1, 0),
    ([{"data": {"image/svg+xml": "<svg/>"}}, {"data": {"image/png": "iVBOR"}}], 2, 0),
    ([{"data": {"text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "df"}}], 0, 1),
    ([{"data": {"text/html": ["<div><table>", "</table><table class='x'></table></div>"]}}], 0, 2),
    ([{"data": {"text/html": "<div>no table</div>", "image/png": "iVBOR"}}], 0, 0),  # rendered as HTML, not the image
    ([{"data": {"application/papermill.record/image/png": "iVBOR"}}], 0, 0),  # glued, shown only where referenced
    ([{"name": "stdout", "output_type": "stream", "text": "<table>"}], 0, 0),
])
def test_a_notebooks_figures_and_tables_are_the_outputs_its_page_renders_as_such(tmp_path, outputs, figures, tables):
    notebook = tmp_path / "chapter.ipynb"
    cells = [{"cell_type": "code", "metadata": {}, "outputs": outputs},
             {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "outputs": outputs},
             {"cell_type": "markdown", "metadata": {}, "source": "<table></table>"}]
    notebook.write_text(json.dumps({"cells": cells}))
    assert notebook_figures_and_tables(notebook) == (figures, tables)


def takeaways_and_solutions(notebook: Path) -> tuple[int, int]:
    """How many takeaways the executed notebook's ``labkit.display.takeaways`` output lists, and how many solution
    cells (tagged hide-cell) it has."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    lists = ["".join(o["data"]["text/markdown"]) for c in cells for o in c.get("outputs", [])
             if "".join(o.get("data", {}).get("text/markdown", "")).startswith("**Takeaways**")]
    assert len(lists) == 1, f"{notebook.name}: {len(lists)} takeaways outputs; expected 1"
    hidden = sum("hide-cell" in c["metadata"].get("tags", []) for c in cells)
    return lists[0].count("\n- "), hidden


def test_takeaways_and_solutions_are_counted_from_the_executed_notebook(tmp_path):
    from labkit.display import takeaways

    shown = {"data": {"text/markdown": takeaways("one", "two", "three")._repr_markdown_(), "text/plain": "..."}}
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [shown]},
             {"cell_type": "code", "metadata": {"tags": ["hide-cell"]}, "outputs": []},
             {"cell_type": "code", "metadata": {"tags": ["hide-cell"]}, "outputs": [{"data": {"text/markdown": "- a"}}]},
             {"cell_type": "markdown", "metadata": {"tags": ["hide-cell"]}, "source": "**Takeaways**"}]
    notebook = tmp_path / "chapter.ipynb"
    notebook.write_text(json.dumps({"cells": cells}))
    assert takeaways_and_solutions(notebook) == (3, 2)
    notebook.write_text(json.dumps({"cells": cells[1:]}))
    with pytest.raises(AssertionError, match="0 takeaways outputs"):
        takeaways_and_solutions(notebook)


@pytest.mark.parametrize("stem", CHAPTERS)
def test_a_chapter_page_lists_its_takeaways_and_hides_each_solution_behind_a_toggle(html, stem):
    """The takeaways output renders as a bulleted list (not raw Markdown); every solution cell sits in a toggle."""
    sentences, solutions = takeaways_and_solutions(html / "notebooks" / f"{stem}.ipynb")
    page = (html / "notebooks" / f"{stem}.html").read_text()
    assert "**Takeaways**" not in page, f"{stem}: the takeaways are shown as raw Markdown"
    start = page.index("<strong>Takeaways</strong>")
    listed = page[page.index("<ul", start):page.index("</ul>", start)]
    assert listed.count("<li") == sentences, f"{stem}: {listed.count('<li')} takeaways on the page, {sentences} in the notebook"
    toggled = page.count('class="cell tag_hide-cell')
    assert solutions >= 2 and toggled == solutions, f"{stem}: {toggled} hidden cells on the page, {solutions} in the notebook"


@pytest.fixture(scope="session")
def parsed():
    """Parsed pages shared by the link checks (a page is linked to from many)."""
    return {}


@pytest.mark.parametrize("name", PAGES)
def test_every_internal_link_names_a_file_and_an_anchor_of_the_site(html, parsed, name):
    broken = broken_links(html, html / name, parsed)
    assert not broken, f"{name}: {len(broken)} broken links:\n" + "\n".join(broken)


def test_searching_for_lora_in_the_browser_finds_a_chapter(html, browser):
    page = browser.new_page()
    page.route("http*://**", lambda route: route.abort())
    try:
        page.goto((html / "search.html").resolve().as_uri() + "?q=LoRA", wait_until="load")
        # results are listed one by one; the status line says when the last is in
        page.wait_for_function("(document.querySelector('#search-results') || {}).innerText?.includes('Search finished')",
                               timeout=60_000)
        found = page.eval_on_selector_all("#search-results ul.search li a", "links => links.map(a => a.getAttribute('href'))")
    finally:
        page.close()
    chapters = [href for href in found if href.startswith("notebooks/ch")]
    assert chapters, f"searching for LoRA found no chapter, only {found}"
    assert (html / chapters[0].split("?")[0].split("#")[0]).is_file()


@pytest.mark.parametrize("stem", SCREENSHOTS)
def test_a_full_page_screenshot_of_the_chapter_is_saved_beside_the_site(html, checked, stem):
    checked(f"notebooks/{stem}.html")
    png = html.parent.parent / "screenshots" / f"{stem}.png"
    assert png.is_file(), f"no screenshot {png}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 2 * 900, f"{png}: {width}x{height}, expected the whole page at 1280 px wide"
    assert len(data) > 100_000, f"{png}: {len(data)} bytes, too few for a chapter"


PLANTED = "notebooks/ch06_lora.html"
PLANTS = {
    # MathJax typesets every $$ it reaches, so raw TeX survives only where it does not reach: a class it skips
    "raw $$ in a paragraph MathJax skips": (
        lambda page: page.replace('<article class="bd-article">',
                                  '<article class="bd-article"><p class="mathjax_ignore">$$x^2$$</p>', 1),
        ["raw TeX '$$' in the rendered text"]),
    "a formula MathJax cannot parse": (
        lambda page: page.replace('<article class="bd-article">', '<article class="bd-article">'
                                  '<p><span class="math notranslate nohighlight">\\(\\frac{1}\\)</span></p>', 1),
        ["formula left unrendered or rendered as an error"]),
    "MathJax's script missing": (
        lambda page: page.replace('<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>', "", 1),
        ["formula left unrendered", "raw TeX '\\\\(' in the rendered text"]),
    "a link to a missing page and one to a missing anchor": (
        lambda page: page.replace('<article class="bd-article">', '<article class="bd-article">'
                                  '<a href="ch99_missing.html">a</a><a href="ch05_full_finetuning.html#no-such-section">b</a>', 1),
        ["ch99_missing.html: no such file", "ch05_full_finetuning.html has no element id 'no-such-section'"]),
    "a missing image": (
        lambda page: page.replace('<article class="bd-article">',
                                  '<article class="bd-article"><img src="../_images/no-such-figure.png" alt="">', 1),
        ["image not loaded: ../_images/no-such-figure.png", "the site lacks", "no such file _images/no-such-figure.png"]),
    "a figure output dropped from the page": (
        lambda page: re.sub(r'<img alt="[^"]*" src="\.\./_images/[0-9a-f]{64}\.png" />', "", page, count=1),
        ["ch06_lora.ipynb has", "figures, its page shows"]),
}


@pytest.mark.parametrize("plant", PLANTS)
def test_the_checks_report_a_planted_fault(html, browser, tmp_path, plant):
    """A copy of a real chapter page, with one fault planted, beside links to the rest of the site."""
    edit, expected = PLANTS[plant]
    for entry in html.iterdir():
        if entry.name != "notebooks":
            (tmp_path / entry.name).symlink_to(entry.resolve())
    (tmp_path / "notebooks").mkdir()
    for entry in (html / "notebooks").iterdir():
        if entry.name != Path(PLANTED).name:
            (tmp_path / "notebooks" / entry.name).symlink_to(entry.resolve())
    original = (html / PLANTED).read_text()
    planted = edit(original)
    assert planted != original, f"{plant}: the page {PLANTED} no longer has what the plant edits"
    (tmp_path / PLANTED).write_text(planted)
    check = check_page(browser, tmp_path / PLANTED)
    problems = check.problems + broken_links(tmp_path, tmp_path / PLANTED) + \
        missing_outputs(check, tmp_path / Path(PLANTED).with_suffix(".ipynb"))
    missed = [e for e in expected if not any(e in problem for problem in problems)]
    assert not missed, f"{plant}: not reported: {missed}; reported: {problems}"
