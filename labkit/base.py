"""The base model shipped inside labkit: load it and read what its build recorded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from labkit.paths import BASE_DIR

def load_base(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of the shipped base model, in eval mode, on the CPU, offline.

    Weights are stored in bf16 and upcast to ``dtype`` (fp32 by default: CPU training wants it).
    """
    path = Path(path or BASE_DIR)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no model.safetensors in {path}; rebuild it with `python -m labkit.build_base`")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, tokenizer


def build_record(path: str | Path | None = None) -> dict:
    """What ``python -m labkit.build_base`` measured when it built the shipped weights."""
    return json.loads((Path(path or BASE_DIR) / "build.json").read_text())


def pretrain_record(path: str | Path | None = None) -> dict:
    """The recipe and loss curves of the shipped model's pretraining run."""
    return json.loads((Path(path or BASE_DIR) / "pretrain_log.json").read_text())
