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
