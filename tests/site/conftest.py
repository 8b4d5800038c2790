from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def html(request) -> Path:
    """The built site's HTML folder (``--site build/site``, as ``make html`` passes it)."""
    site = request.config.getoption("--site")
    if site is None:
        pytest.skip("needs a built book: make html runs tests/site with --site build/site")
    path = Path(site) / "_build" / "html"
    assert (path / "index.html").exists(), f"{path} holds no built site"
    return path


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
