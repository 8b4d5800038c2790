"""Profiles: where a chapter runs (CPU with the embedded model, or a GPU with a hub model) and at what size.

A chapter's tagged ``parameters`` cell names a profile (or leaves it ``None`` to pick by hardware);
everything size-dependent is read from the profile, so the code path is the same on both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.eval.heldout import CHARS_PER_DOCUMENT
from labkit.hubstyle import HUB_STYLE_FULL_ID, HUB_STYLE_ID, SHAPES
from labkit.vocabulary import precision_for

AUTO = None
"""Pass as the profile name to choose by hardware: ``gpu`` when CUDA is available, else ``cpu-tiny``."""


@dataclass(frozen=True)
class Profile:
    """Where a chapter runs and how big its runs are."""

    name: str
    model_id: str | None
    """A hub id or local directory; ``None`` means labkit's embedded base model (offline);
    ``labkit.hubstyle.HUB_STYLE_ID`` a hub-style model built offline (:func:`model_path`)."""
    device: str
    """``cpu`` or ``cuda``."""
    dtype: str
    """Compute dtype: ``float32`` on the CPU, ``bfloat16`` on GPUs that support it (``float16`` otherwise).
    Weights are always loaded in fp32: 16-bit training keeps fp32 master weights (:attr:`precision`)."""
    train_steps: int
    """Optimiser steps of one fine-tuning run in the method chapters (chapters derive their other budgets from it)."""
    batch_size: int
    eval_examples: int
    """Held-out prompts per task when scoring generations."""
    max_seq_len: int
    """Longest training sequence (tokens)."""
    max_new_tokens: int = 24
    """Longest generated answer when scoring."""
    train_examples: int = 800
    """Training examples per task in the method chapters."""
    heldout_chars: int = CHARS_PER_DOCUMENT
    """Characters kept from each held-out document when measuring forgetting (``labkit.eval.heldout_texts``)."""

    def __post_init__(self):
        if self.device not in {"cpu", "cuda"}:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for field in ("train_steps", "batch_size", "eval_examples", "max_seq_len", "max_new_tokens", "train_examples",
                      "heldout_chars"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype: what the forward pass computes in (and QLoRA's compute dtype)."""
        return getattr(torch, self.dtype)

    @property
    def precision(self) -> str:
        """How this profile trains, in ``labkit.vocabulary.PRECISIONS``: ``fp32`` when ``dtype`` is float32;
        otherwise 16-bit compute with fp32 master weights (``bf16-mixed``, or ``fp16-mixed`` with loss scaling)."""
        return precision_for(self.dtype)

    @property
    def embedded(self) -> bool:
        """True when the profile uses labkit's shipped model (no hub access needed)."""
        return self.model_id is None


PROFILES: dict[str, Profile] = {
    "cpu-tiny": Profile(
        name="cpu-tiny", model_id=None, device="cpu", dtype="float32",
        train_steps=80, batch_size=16, eval_examples=100, max_seq_len=256, train_examples=800,
    ),
    "gpu": Profile(
        name="gpu", model_id="Qwen/Qwen2.5-0.5B", device="cuda", dtype="bfloat16",
        train_steps=1000, batch_size=16, eval_examples=500, max_seq_len=1024, train_examples=4000,
    ),
    # The gpu profile's code path on a CPU: a hub-style model and tokenizer (labkit.hubstyle), 16-bit
    # mixed precision, steps cut to 2. What it cannot check: CUDA placement and kernels.
    "gpu-rehearsal": Profile(
        name="gpu-rehearsal", model_id=HUB_STYLE_ID, device="cpu", dtype="bfloat16",
        train_steps=2, batch_size=4, eval_examples=4, max_seq_len=128, max_new_tokens=8, train_examples=16,
        heldout_chars=200,
    ),
}
# The gpu profile on a GPU machine that reaches no hub (make gpu-check): Qwen2.5-0.5B's full shape with
# random weights built offline, step and example counts cut so that every chapter runs in minutes.
PROFILES["gpu-check"] = dataclasses.replace(PROFILES["gpu"], name="gpu-check", model_id=HUB_STYLE_FULL_ID, train_steps=10,
                                            eval_examples=16, train_examples=160)


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


def model_path(profile: Profile):
    """Where ``profile``'s model loads from: labkit's shipped folder, a hub-style folder (built on first
    use, ``labkit.hubstyle.SHAPES``), or the hub id."""
    from labkit.hubstyle import build_hub_style
    from labkit.paths import BASE_DIR

    if profile.embedded:
        return BASE_DIR
    return build_hub_style(model_id=profile.model_id) if profile.model_id in SHAPES else profile.model_id


def load_model(profile: Profile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``profile``, in fp32 (see :attr:`Profile.dtype`), on the profile's device.

    A hub tokenizer keeps its own chat template; one without a padding token pads with its
    end-of-sequence token. A template without ``{% generation %}`` markers has no assistant-token mask:
    ``labkit.train.sft`` refuses TRL's ``assistant_only_loss`` with it, and ``labkit.data.tokenize_dataset``
    masks by rendered spans instead, which works with any template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit.base import load_base

    # fp32 weights in every precision: with bf16/fp16 the trainer computes in 16 bits under autocast and
    # updates these fp32 masters. Loading 16-bit weights would train them pure 16-bit, where small updates
    # round away (and fp16 gradients cannot be unscaled).
    if profile.embedded:
        model, tokenizer = load_base(dtype=torch.float32)
    else:
        path = model_path(profile)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.to(profile.device).eval(), tokenizer
