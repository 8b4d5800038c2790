"""A byte-level BPE tokenizer with a ChatML chat template, trained offline with `tokenizers`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
"""Ends a document in pretraining; the base model's end-of-sequence token."""
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
"""ChatML turn delimiters; ``<|im_end|>`` also stops generation in chat."""
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END, PAD]

# ChatML, as Qwen2.5 and SmolLM2 use it. The {% generation %} markers let transformers return an
# assistant-token mask (``return_assistant_tokens_mask``), which TRL's ``assistant_only_loss``
# needs. The newline after <|im_end|> sits outside the marker: the model must learn to stop, not
# to emit the newline that follows.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def has_generation_markers(chat_template: str | None) -> bool:
    """True if ``chat_template`` marks assistant replies with ``{% generation %}`` (needed for an assistant-token mask)."""
    return bool(re.search(r"\{%-?\s*generation\s*-?%\}", chat_template or ""))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; digits are split one per token (arithmetic stays learnable)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (all bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a raw `tokenizers` object, with our specials and template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
