import hashlib

import pytest
import torch

import labkit
from labkit import corpus
from labkit.paths import BASE_DIR
from labkit.eval.diversity import distinct_ngram_ratio, known_word_ratio, word_vocabulary


def test_shipped_files_match_their_recorded_checksums():
    record = labkit.build_record()
    assert "model.safetensors" in record["sha256"]
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((BASE_DIR / name).read_bytes()).hexdigest() == digest, name


def test_weights_are_small_enough_to_ship():
    assert (BASE_DIR / "model.safetensors").stat().st_size <= 15 * 2**20


def test_parameter_count_matches_the_record(base):
    assert sum(p.numel() for p in base[0].parameters()) == labkit.build_record()["parameters"]


def test_load_and_generate_offline():
    model, tokenizer = labkit.load_base()
    text = labkit.complete(model, tokenizer, "def read_config(path):\n", max_new_tokens=32)[0]
    assert len(text) > 10


@pytest.mark.slow
def test_sampling_continues_heldout_prefixes_with_real_words_not_loops(base):
    model, tokenizer = base
    train_docs, _ = corpus.split_documents(corpus.stdlib_documents())
    vocabulary = word_vocabulary(d.text for d in train_docs)  # real words and identifier parts
    prefixes = [d.text[:200] for d in corpus.heldout_documents()[:6]]
    outs = labkit.complete(model, tokenizer, prefixes, max_new_tokens=48, seed=0)
    distinct = [distinct_ngram_ratio(tokenizer(o)["input_ids"]) for o in outs]
    known = [known_word_ratio(o, vocabulary) for o in outs]
    assert sum(distinct) / len(distinct) > 0.8
    # an untrained model samples corpus sub-words too and scores about 0.8 here; the shipped one about 0.95
    assert sum(known) / len(known) > 0.9
    greedy = labkit.complete(model, tokenizer, prefixes, max_new_tokens=48, do_sample=False, repetition_penalty=1.0)
    # even greedy decoding, where small models loop, keeps repeats in check (untrained: about 0.04)
    assert sum(distinct_ngram_ratio(tokenizer(o)["input_ids"]) for o in greedy) / len(greedy) > 0.3


def test_load_base_reports_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="labkit.build_base"):
        labkit.load_base(tmp_path)


def test_load_base_dtype():
    model, _ = labkit.load_base(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


PROMPTS = ["def read_config(path):\n", "Reverse the order of the words.\nalpha, beta, gamma\nAnswer:", "import os\n"]
