"""The built site: every chapter page's Colab badge, notebook download and wheel link lead to files it carries."""

import importlib.util
import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("stage_book", ROOT / "scripts" / "stage_book.py")
stage_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_book)

CHAPTERS = [e.removeprefix("notebooks/") for e in stage_book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
            if e.startswith("notebooks/")]
URLS = stage_book.addresses()


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
def browser():
    """Debian's chromium, driven by Playwright (whose own browser download needs the network)."""
    import shutil

    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium): .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.mark.parametrize("stem", CHAPTERS)
def test_in_a_browser_offline_every_resource_loads_and_the_math_renders(html, browser, stem):
    page_file = html / "notebooks" / f"{stem}.html"
    page = browser.new_page()
    failed, errors = [], []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("http*://**", lambda route: route.abort())  # a reader without network: nothing outside the site loads
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    math = page.locator("span.math, div.math").count()
    if math:
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("MathJax.startup.promise")
    unrendered = page.evaluate("Array.from(document.querySelectorAll('span.math, div.math'))"
                               ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))")
    page.close()
    assert not [u for u in failed if u.startswith("file:")], f"{page_file.name}: files the site lacks: {failed}"
    assert not errors, f"{page_file.name}: script errors {errors}"
    assert not unrendered, f"{page_file.name}: {len(unrendered)} of {math} formulas left as raw TeX, e.g. {unrendered[:3]}"
