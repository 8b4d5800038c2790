"""The built site's pages checked as a reader sees them: offline in a browser, and their links against the files."""

import json
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

SKIPPED = ("_static", "_sources", "_images", "genindex.html", "search.html", "py-modindex.html")
"""Sphinx's machinery, not pages a reader is sent to (the search page has its own test)."""

RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$")
"""Delimiters MathJax removes from the text it renders: any left in the rendered text is unrendered math."""

MATHJAX_TIMEOUT_MS = 30_000

# The rendered text without code (where a delimiter may be meant literally), the formulas MathJax left as
# TeX or rendered as an error, and every image that did not load.
PAGE_STATE = """() => {
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style').forEach(e => e.remove());
  const article = document.querySelector('article.bd-article') || document.body;  // the page's content
  return {
    text: body.innerText,
    unrendered: Array.from(document.querySelectorAll('span.math, div.math'))
      .filter(e => !e.querySelector('mjx-container') || e.querySelector('mjx-merror'))
      .map(e => e.textContent.trim().slice(0, 60)),
    unloaded: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute('src')),
    images: article.querySelectorAll('.cell_output img').length,
    tables: article.querySelectorAll('.cell_output table').length,
  };
}"""


def site_pages(html: Path) -> list[Path]:
    """Every page a reader opens: the index, the prose pages and the chapters (not Sphinx's machinery)."""
    pages = sorted(p for p in html.rglob("*.html") if p.relative_to(html).parts[0] not in SKIPPED)
    if not pages:
        raise FileNotFoundError(f"{html} holds no HTML pages; expected a built jupyter-book site")
    return pages


@dataclass
class PageCheck:
    """What a browser saw on one page: the problems (empty when the page is sound) and what its article shows."""

    problems: list[str] = field(default_factory=list)
    images: int = 0
    """``img`` elements in the cell outputs of the page's article."""
    tables: int = 0
    """``table`` elements in the cell outputs of the page's article."""


def check_page(browser, page_file: Path, screenshot: Path | None = None) -> PageCheck:
    """Open ``page_file`` offline in ``browser`` (a Playwright browser), let MathJax finish, and report every
    script error, ``console.error``, file the site lacks, formula left unrendered, raw TeX delimiter in the
    rendered text and image that did not load. ``screenshot``: also save a full-page PNG there."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    check, failed = PageCheck(), []
    page.on("pageerror", lambda error: check.problems.append(f"script error: {error}"))

    def on_console(message):
        # a request the route below aborts logs an error too: only the site's own errors count
        if message.type == "error" and not _remote(message.location.get("url", "")):
            check.problems.append(f"console.error: {message.text}")

    page.on("console", on_console)
    page.on("requestfailed", lambda request: request.url.startswith("file:") and failed.append(request.url))
    page.route("http*://**", lambda route: route.abort())  # a reader without network: nothing outside the site loads
    try:
        page.goto(page_file.resolve().as_uri(), wait_until="load")
        redirect = refresh_target(page_file.read_text(errors="replace"))
        if redirect is not None:  # a redirect page (the site's index): check the page it leads to, once loaded
            page.wait_for_url((page_file.parent / redirect).resolve().as_uri(), wait_until="load")
        if page.locator("script[src*='mathjax']").count():
            try:
                page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=MATHJAX_TIMEOUT_MS)
                page.evaluate("MathJax.startup.promise")
            except Exception as error:  # Playwright's TimeoutError: report it with the page's other problems
                check.problems.append(f"MathJax did not start within {MATHJAX_TIMEOUT_MS} ms: {error}")
        state = page.evaluate(PAGE_STATE)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    check.problems += [f"the site lacks {unquote(url)}" for url in dict.fromkeys(failed)]
    unrendered = state["unrendered"]
    check.problems += [f"formula left unrendered or rendered as an error: {tex!r}" for tex in unrendered[:5]]
    check.problems += [f"... and {len(unrendered) - 5} more formulas like these"] if len(unrendered) > 5 else []
    check.problems += [f"raw TeX {delimiter!r} in the rendered text: ...{_around(state['text'], delimiter)}..."
                       for delimiter in RAW_TEX if delimiter in state["text"]]
    check.problems += [f"image not loaded: {src}" for src in state["unloaded"]]
    check.problems = list(dict.fromkeys(check.problems))
    check.images, check.tables = state["images"], state["tables"]
    return check


REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", re.IGNORECASE)


def refresh_target(page_text: str) -> str | None:
    """The address a ``<meta http-equiv="refresh">`` page redirects to, or None."""
    found = REFRESH.search(page_text)
    return found.group(1) if found else None


def _remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _around(text: str, needle: str, width: int = 30) -> str:
    at = text.index(needle)
    return text[max(0, at - width):at + len(needle) + width].replace("\n", " ")


IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
OUTPUT_PRIORITY = ("application/vnd.jupyter.widget-view+json", "application/javascript", "text/html",
                   "image/svg+xml", "image/png", "image/jpeg", "text/markdown", "text/latex", "text/plain")
"""The MIME type myst-nb renders of an output that offers several (its HTML builder's order)."""


def notebook_figures_and_tables(notebook: Path) -> tuple[int, int]:
    """How many figures (image outputs) and HTML tables (``<table`` in an HTML output) an executed notebook
    shows: the least the page rendered from it must carry."""
    figures = tables = 0
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code" or {"remove-output", "remove-cell"} & set(cell["metadata"].get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            shown = next((mime for mime in OUTPUT_PRIORITY if mime in output.get("data", {})), None)
            if shown in IMAGE_TYPES:
                figures += 1
            elif shown == "text/html":
                content = output["data"][shown]
                tables += len(re.findall(r"<table[\s>]", "".join(content) if isinstance(content, list) else content))
    return figures, tables


def missing_outputs(check: PageCheck, notebook: Path) -> list[str]:
    """The figures and tables of the executed ``notebook`` its page (seen by ``check``) does not show."""
    figures, tables = notebook_figures_and_tables(notebook)
    return ([f"{notebook.name} has {figures} figures, its page shows {check.images}"] if check.images < figures else []) + \
        ([f"{notebook.name} has {tables} HTML tables, its page shows {check.tables}"] if check.tables < tables else [])


class _Anchors(HTMLParser):
    """A page's element ids and the relative addresses it links to (every ``href`` and ``src``)."""

    def __init__(self):
        super().__init__()
        self.ids, self.targets = set(), []

    def handle_starttag(self, tag, attrs):
        if tag == "meta" and (dict(attrs).get("http-equiv") or "").lower() == "refresh":
            self.targets += [t for t in [refresh_target(self.get_starttag_text())] if t]
        for name, value in attrs:
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif name in ("href", "src") and value:
                self.targets.append(value)


def _parse(page: Path, cache: dict) -> _Anchors:
    if page not in cache:
        cache[page] = _Anchors()
        cache[page].feed(page.read_text(errors="replace"))
    return cache[page]


def broken_links(html: Path, page: Path, cache: dict | None = None) -> list[str]:
    """Every relative ``href``/``src`` of ``page`` that names no file in the site ``html``, or a ``#fragment``
    that names no element of its target page. External (http, mailto, data) addresses are not followed."""
    cache = {} if cache is None else cache
    broken, root = [], html.absolute()
    for address in _parse(page, cache).targets:
        url = urlparse(address)
        if url.scheme or address.startswith("//"):
            continue
        # normpath, not resolve: a site assembled from links (the planted-page tests) stays one site
        target = Path(os.path.normpath(page.absolute().parent / unquote(url.path))) if url.path else page.absolute()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(root):
            broken.append(f"{address}: outside the site")
        elif not target.is_file():
            broken.append(f"{address}: no such file {target.relative_to(root)}")
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _parse(target, cache).ids:
            broken.append(f"{address}: {target.name} has no element id {url.fragment!r}")
    return broken
