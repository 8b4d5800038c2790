"""Saving, reloading and merging a trained adapter, checked against the model that trained it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel

MERGEABLE = ("LORA", "IA3")
"""peft types whose update folds into the weights (prompt and prefix tuning add inputs instead)."""


def _peft_type(model) -> str | None:
    config = getattr(model, "active_peft_config", None)
    peft_type = getattr(config, "peft_type", None)
    return getattr(peft_type, "value", peft_type)


@torch.no_grad()
def adapter_round_trip(trained: PreTrainedModel, base: PreTrainedModel, input_ids: torch.Tensor) -> dict:
    """Save ``trained``'s adapter, load it onto ``base`` (an untouched base model), merge where possible.

    Returns the adapter's bytes on disk and the largest logit difference from ``trained`` after
    reloading and after merging (NaN where the method cannot merge). A fully fine-tuned model (no
    adapter) reports the bytes of all its weights and zero differences.
    """
    from peft import PeftModel

    trained.eval()
    reference = trained(input_ids=input_ids).logits
    peft_type = _peft_type(trained)
    if peft_type is None:
        return {"saved bytes": sum(p.numel() * p.element_size() for p in trained.parameters()),
                "reload max |Δlogit|": 0.0, "merge max |Δlogit|": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_pretrained(tmp)
        saved = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.suffix == ".safetensors")
        reloaded = PeftModel.from_pretrained(base, tmp).eval()
    reload_diff = (reloaded(input_ids=input_ids).logits - reference).abs().max().item()
    merge_diff = float("nan")
    if peft_type in MERGEABLE:
        merged = reloaded.merge_and_unload()
        merge_diff = (merged(input_ids=input_ids).logits - reference).abs().max().item()
    return {"saved bytes": saved, "reload max |Δlogit|": reload_diff, "merge max |Δlogit|": merge_diff}

