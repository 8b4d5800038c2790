import subprocess
import sys

import pytest

import labkit
from labkit import corpus


@pytest.mark.slow
def test_stable_bucket_is_the_same_in_another_process():
    names = ["json.decoder", "topic:assignment", "asyncio.runners"]
    here = [corpus.stable_bucket(n) for n in names]
    code = f"from labkit.corpus import stable_bucket; print([stable_bucket(n) for n in {names!r}])"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert out.stdout.strip() == str(here)


def test_a_modules_docstrings_and_source_share_a_split():
    docs = [corpus.Document("docstring:json.decoder", "x"), corpus.Document("source:json/decoder.py", "y"),
            corpus.Document("source:json/__init__.py", "z"), corpus.Document("docstring:json", "w")]
    assert docs[0].group == docs[1].group == "json.decoder"
    assert docs[2].group == docs[3].group == "json"


def test_shipped_heldout_documents_are_heldout_groups():
    shipped = corpus.heldout_documents()
    assert len(shipped) >= 10
    assert all(corpus.is_heldout(d) for d in shipped)


BUILT_WITH = labkit.pretrain_record()["python"]
"""The Python whose standard library the shipped model and held-out documents were built from (e.g. ``3.11.7``)."""


@pytest.mark.slow
@pytest.mark.skipif(f"{sys.version_info[0]}.{sys.version_info[1]}" != ".".join(BUILT_WITH.split(".")[:2]),
                    reason=f"rebuilds the corpus from this interpreter's standard library; the shipped documents "
                           f"come from Python {BUILT_WITH}'s")
def test_shipped_heldout_documents_are_exactly_the_heldout_groups_of_this_stdlib():
    shipped = corpus.heldout_documents()
    train, heldout = corpus.split_documents(corpus.stdlib_documents())
    assert not {d.group for d in train} & {d.group for d in shipped}
    assert {d.name for d in heldout} == {d.name for d in shipped}


def test_heldout_text_dataset_columns():
    ds = corpus.heldout_text(max_docs=3)
    assert ds.column_names == ["name", "kind", "text"] and len(ds) == 3
