import hashlib
import time

import pytest
import torch

import labkit
from labkit import corpus
from labkit.base import BASE_DIR
from labkit.eval.generation import distinct_ngram_ratio, known_word_ratio, word_vocabulary


def test_shipped_files_match_their_recorded_checksums():
    record = labkit.build_record()
    assert "model.safetensors" in record["sha256"]
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((BASE_DIR / name).read_bytes()).hexdigest() == digest, name


def test_weights_are_small_enough_to_ship():
    assert (BASE_DIR / "model.safetensors").stat().st_size <= 15 * 2**20


def test_heldout_perplexity_matches_the_build_record(base):
    model, tokenizer = base
    assert labkit.heldout_perplexity(model, tokenizer) == pytest.approx(labkit.build_record()["heldout_perplexity"], rel=1e-3)


def test_parameter_count_matches_the_record(base):
    assert sum(p.numel() for p in base[0].parameters()) == labkit.build_record()["parameters"]


def test_load_and_generate_offline_in_under_five_seconds():
    start = time.perf_counter()
    model, tokenizer = labkit.load_base()
    text = labkit.complete(model, tokenizer, "def read_config(path):\n", max_new_tokens=32)[0]
    assert time.perf_counter() - start < 5
    assert len(text) > 10


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


def test_generation_is_reproducible_with_a_seed(base):
    model, tokenizer = base
    a = labkit.complete(model, tokenizer, ["import os\n", "class Queue"], seed=3)
    assert a == labkit.complete(model, tokenizer, ["import os\n", "class Queue"], seed=3)
    assert a != labkit.complete(model, tokenizer, ["import os\n", "class Queue"], seed=4)


def test_left_padding_does_not_change_a_greedy_continuation(base):
    model, tokenizer = base
    alone = labkit.complete(model, tokenizer, "x", do_sample=False, max_new_tokens=8)[0]
    batched = labkit.complete(model, tokenizer, ["x", "a much longer prompt than x"], do_sample=False, max_new_tokens=8)[0]
    assert alone == batched


def test_load_base_reports_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="labkit.build_base"):
        labkit.load_base(tmp_path)


def test_load_base_dtype():
    model, _ = labkit.load_base(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


PROMPTS = ["def read_config(path):\n", "Reverse the order of the words.\nalpha, beta, gamma\nAnswer:", "import os\n"]


def _greedy_generate(model, tokenizer, texts, max_new_tokens):
    return labkit.base.generate_batch(model, tokenizer, texts, max_new_tokens=max_new_tokens, do_sample=False,
                                      repetition_penalty=1.0, temperature=None, top_k=None, top_p=None)


def test_cacheless_greedy_equals_generate_on_a_plain_model(base):
    model, tokenizer = base
    ours = labkit.base.greedy_no_cache(model, tokenizer, PROMPTS, max_new_tokens=12, stop="\0")
    assert ours == _greedy_generate(model, tokenizer, PROMPTS, 12)
    assert all(len(text) > 0 for text in ours)


def test_cacheless_greedy_stops_each_row_at_the_stop_string(base):
    model, tokenizer = base
    full = labkit.base.greedy_no_cache(model, tokenizer, PROMPTS, max_new_tokens=24, stop="\0")
    cut = labkit.base.greedy_no_cache(model, tokenizer, PROMPTS, max_new_tokens=24)
    for long, short in zip(full, cut):
        assert long.startswith(short)
        if "\n" in long:
            assert "\n" in short and len(short) <= len(long)


def _prompt_learning_model(model, kind="prefix"):
    import copy

    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    config = (PrefixTuningConfig if kind == "prefix" else PromptTuningConfig)(task_type="CAUSAL_LM", num_virtual_tokens=8)
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    if kind == "prompt":  # peft draws the prompt from N(0, 1), far larger than the tiny model's embeddings
        with torch.no_grad():
            peft_model.prompt_encoder["default"].embedding.weight.copy_(model.get_input_embeddings().weight[100:108])
    return peft_model


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_prompt_learning_generate_disagrees_with_its_own_forward_pass(base, kind):
    """Documents why labkit decodes these models by forward passes; fails once generate() is fixed."""
    model, tokenizer = base
    prefixed = _prompt_learning_model(model, kind)
    assert labkit.base.is_prompt_learning(prefixed) and not labkit.base.is_prompt_learning(model)
    first_step = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            first_step.append(tokenizer.decode(prefixed(input_ids=ids).logits[0, -1].argmax()))
    ours = labkit.base.greedy_no_cache(prefixed, tokenizer, PROMPTS, max_new_tokens=8, stop="\0")
    assert [text.startswith(token) for text, token in zip(ours, first_step)] == [True] * len(PROMPTS)
    assert ours != _greedy_generate(prefixed, tokenizer, PROMPTS, 8)


def test_generate_answers_decodes_prompt_learning_models_by_forward_passes(base):
    from labkit.eval import generate_answers

    model, tokenizer = base
    prefixed = _prompt_learning_model(model)
    expected = [t.strip().split("\n", 1)[0].strip() for t in labkit.base.greedy_no_cache(prefixed, tokenizer, PROMPTS, max_new_tokens=10)]
    assert generate_answers(prefixed, tokenizer, PROMPTS, max_new_tokens=10, progress=False) == expected
