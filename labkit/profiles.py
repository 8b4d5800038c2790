"""Profiles: where a chapter runs (CPU with the embedded model, or a GPU with a hub model) and at what size.

A chapter's tagged ``parameters`` cell names a profile (or leaves it ``None`` to pick by hardware);
everything size-dependent is read from the profile, so the code path is the same on both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

AUTO = None
"""Pass as the profile name to choose by hardware: ``gpu`` when CUDA is available, else ``cpu-tiny``."""


@dataclass(frozen=True)
class Profile:
    """Where a chapter runs and how big its runs are."""

    name: str
    model_id: str | None
    """A hub id or local directory; ``None`` means labkit's embedded base model (offline)."""
    device: str
    """``cpu`` or ``cuda``."""
    dtype: str
    """Weight dtype for training: ``float32`` on the CPU, ``bfloat16`` on GPUs that support it."""
    train_steps: int
    """Optimiser steps of a typical fine-tuning run in a chapter."""
    batch_size: int
    eval_examples: int
    """Held-out prompts per task when scoring generations."""
    max_seq_len: int
    """Longest training sequence (tokens)."""
    max_new_tokens: int = 24

    def __post_init__(self):
        if self.device not in {"cpu", "cuda"}:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for field in ("train_steps", "batch_size", "eval_examples", "max_seq_len", "max_new_tokens"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def embedded(self) -> bool:
        """True when the profile uses labkit's shipped model (no hub access needed)."""
        return self.model_id is None


PROFILES: dict[str, Profile] = {
    "cpu-tiny": Profile(
        name="cpu-tiny", model_id=None, device="cpu", dtype="float32",
        train_steps=200, batch_size=16, eval_examples=100, max_seq_len=256,
    ),
    "gpu": Profile(
        name="gpu", model_id="Qwen/Qwen2.5-0.5B", device="cuda", dtype="bfloat16",
        train_steps=1000, batch_size=16, eval_examples=500, max_seq_len=1024,
    ),
}


def get_profile(name: str | None = AUTO, **overrides) -> Profile:
    """The named profile (``None``: by hardware), with any field overridden, e.g. ``model_id=...``.

    Overrides whose value is ``None`` are ignored, so a parameters cell can pass its knobs through.
    """
    if name is AUTO:
        name = "gpu" if torch.cuda.is_available() else "cpu-tiny"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; fields are {[f.name for f in dataclasses.fields(Profile)]}")
    profile = dataclasses.replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {profile.name!r} needs CUDA, which this machine lacks; use 'cpu-tiny'")
    if profile.dtype == "bfloat16" and profile.device == "cuda" and not torch.cuda.is_bf16_supported():
        profile = dataclasses.replace(profile, dtype="float16")  # e.g. Colab's T4
    return profile


def load_model(profile: Profile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``profile``: the embedded model offline, or a hub model on the GPU.

    Hub tokenizers that know ChatML's tokens get labkit's template, whose ``{% generation %}``
    markers make assistant-only loss masks available (Qwen2.5's and SmolLM2's own templates lack them).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit.base import load_base
    from labkit.tokenizer import CHAT_TEMPLATE, IM_END, IM_START

    if profile.embedded:
        model, tokenizer = load_base(dtype=profile.torch_dtype)
    else:
        tokenizer = AutoTokenizer.from_pretrained(profile.model_id)
        model = AutoModelForCausalLM.from_pretrained(profile.model_id, dtype=profile.torch_dtype)
        vocab = tokenizer.get_vocab()
        if IM_START in vocab and IM_END in vocab:
            tokenizer.chat_template = CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.to(profile.device), tokenizer
