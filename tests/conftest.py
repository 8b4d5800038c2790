import pytest

import labkit


@pytest.fixture(scope="session")
def base():
    """The shipped (model, tokenizer), loaded once per test process."""
    return labkit.load_base()


@pytest.fixture(scope="session")
def tokenizer(base):
    return base[1]


def pytest_addoption(parser):
    parser.addoption("--site", default=None, help="a built book (make html's build/site) for tests/site")
