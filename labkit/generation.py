"""Generating text from a model: sampled completions, batched greedy answers, and decoding prompt-learning models."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: str | list[str],
    *,
    max_new_tokens: int = 48,
    seed: int = 0,
    **generate_kwargs,
) -> list[str]:
    """Continue each prompt with the model's generation defaults (sampling; pass ``do_sample=False`` for greedy).

    Prompts are left-padded into one batch; returns only the new text of each.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    torch.manual_seed(seed)
    return generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, **generate_kwargs)


@torch.no_grad()
def generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], **generate_kwargs) -> list[str]:
    """``model.generate`` on one left-padded batch of ``texts``; returns only the new text of each."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so padding must sit left
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    out = model.generate(**batch.to(next(model.parameters()).device), **generate_kwargs)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def is_prompt_learning(model: PreTrainedModel) -> bool:
    """True for a peft prompt- or prefix-tuned model, whose ``generate()`` is wrong here (see :func:`greedy_no_cache`)."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def _equal_length_groups(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[list[list[int]], dict[int, list[int]]]:
    """Each text's token ids, and the rows of each length: prompts of equal length decode together, without padding."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    return encoded, by_length


@torch.no_grad()
def greedy_no_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                    max_new_tokens: int, stop: str = "\n") -> list[str]:
    """Greedy continuations computed by re-running the whole sequence at every step: no KV cache, no padding.

    With transformers 5.24 and peft 0.21.2, ``generate()`` on a prompt- or prefix-tuned model does not
    follow the model's own forward pass (its tokens differ from the forward pass's argmax; ``tests/test_generation.py``).
    For prefix tuning, transformers warns why: peft passes the prefix as ``past_key_values`` while
    ``generate()`` passes its own ``cache``, and the model uses the cache and ignores the prefix.
    Prompts of equal length are decoded together, so no padding or position bookkeeping is needed;
    a row stops growing once its new text contains ``stop`` or the end-of-sequence token.
    """
    device = next(model.parameters()).device
    encoded, by_length = _equal_length_groups(tokenizer, texts)
    results: list[str] = [""] * len(texts)
    for length, rows in by_length.items():
        ids = torch.tensor([encoded[i] for i in rows], device=device)  # (B, T)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            new = tokenizer.batch_decode(ids[:, length:], skip_special_tokens=False)
            done |= torch.tensor([stop in text or tokenizer.eos_token in text for text in new], device=device)
            if done.all():
                break
        for row, text in zip(rows, tokenizer.batch_decode(ids[:, length:], skip_special_tokens=True)):
            results[row] = text
    return results


@torch.no_grad()
def greedy_prompt_learning(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                           max_new_tokens: int, stop: str = "\n") -> list[str]:
    """:func:`greedy_no_cache`'s continuations of a prompt- or prefix-tuned model, with a KV cache.

    The prompt goes once through the peft model, which prepends the learned tokens (prompt tuning) or
    key/value prefix (prefix tuning) and returns the cache of everything it has seen; each new token then
    goes through the base model on that cache, as ``generate()`` would if it kept peft's cache. Each step
    costs one token's forward instead of the whole sequence's. Rows stop as in :func:`greedy_no_cache`.
    """
    if not is_prompt_learning(model):
        raise ValueError("greedy_prompt_learning decodes peft prompt- or prefix-tuned models; use generate_batch for others")
    device = next(model.parameters()).device
    base = model.get_base_model()
    encoded, by_length = _equal_length_groups(tokenizer, texts)
    results: list[str] = [""] * len(texts)
    for length, rows in by_length.items():
        ids = torch.tensor([encoded[i] for i in rows], device=device)  # (B, T)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache, new = out.past_key_values, []
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            new.append(token)
            texts_so_far = tokenizer.batch_decode(torch.cat(new, dim=1), skip_special_tokens=False)
            done |= torch.tensor([stop in t or tokenizer.eos_token in t for t in texts_so_far], device=device)
            if done.all() or step == max_new_tokens - 1:
                break
            seen = cache.get_seq_length() + 1  # learned tokens or prefix, prompt, and the new token
            mask = torch.ones(len(rows), seen, dtype=torch.long, device=device)
            out = base(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
            cache = out.past_key_values
        for row, text in zip(rows, tokenizer.batch_decode(torch.cat(new, dim=1), skip_special_tokens=True)):
            results[row] = text
    return results
