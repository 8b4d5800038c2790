import pytest

from labkit.tokenizer import EOS, IM_END, IM_START, train_tokenizer

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "Tabs\tand  double  spaces\r\nstay.",
    "Unicode: héllo wörld — 数学 🙂",
    "",
    "12345 + 67890 = 80235",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_digits_are_one_token_each(tokenizer):
    pieces = [tokenizer.decode([i]) for i in tokenizer("x = 2024", add_special_tokens=False)["input_ids"]]
    assert pieces[-4:] == ["2", "0", "2", "4"]


def test_special_tokens_are_single_ids(tokenizer):
    for token in (EOS, IM_START, IM_END):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == EOS and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello<|im_end|>\n")
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_assistant_mask_covers_exactly_the_answers_and_their_end_tokens(tokenizer):
    messages = [{"role": "user", "content": "Reverse the letters.\nsocket"}, {"role": "assistant", "content": "tekcos"},
                {"role": "user", "content": "Again.\nfile"}, {"role": "assistant", "content": "elif"}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == f"tekcos{IM_END}elif{IM_END}"


def test_chat_template_with_return_tensors_gives_a_batch_encoding(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], return_tensors="pt",
                                        add_generation_prompt=True)["input_ids"]
    assert ids.shape[0] == 1 and ids.shape[1] > 3


def test_train_tokenizer_learns_merges_and_rejects_tiny_vocab():
    tok = train_tokenizer(["the cat sat on the mat " * 50], vocab_size=300)
    assert len(tok) <= 300
    assert len(tok("the cat")["input_ids"]) < len("the cat")
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        train_tokenizer(["x"], vocab_size=100)


@pytest.mark.parametrize("template, expected", [
    ("{%- generation -%}x{%- endgeneration -%}", True),
    ("{% generation %}x{% endgeneration %}", True),
    ("{%- if add_generation_prompt -%}<|im_start|>assistant{%- endif -%}", False),
    (None, False),
])
def test_generation_markers_are_found_and_add_generation_prompt_is_not_one(template, expected):
    from labkit.tokenizer import has_generation_markers

    assert has_generation_markers(template) is expected
