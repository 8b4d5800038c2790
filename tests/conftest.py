import copy

import pytest
import torch

import labkit


@pytest.fixture(scope="session")
def base():
    """The shipped (model, tokenizer), loaded once per test process."""
    return labkit.load_base()


@pytest.fixture(scope="session")
def tokenizer(base):
    return base[1]


@pytest.fixture(scope="session")
def perturbed_copy():
    """``perturbed_copy(model, scale)``: a copy of ``model`` with every weight nudged by ``scale`` times its
    standard deviation (seeded): a policy that differs from its reference everywhere."""
    def make(model, scale: float):
        copied = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in copied.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * scale * p.std().clamp(min=1e-3))
        return copied

    return make


def pytest_addoption(parser):
    parser.addoption("--site", default=None, help="a built book (make html's build/site) for tests/site")
