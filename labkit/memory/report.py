"""The result of an estimate or a measurement: bytes per term, printable as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

TERMS: dict[str, str] = {
    "weights": "model weights as stored (frozen base, or all weights in full fine-tuning)",
    "quant_constants": "quantization constants of a 4/8-bit base (absmax scales, codebooks)",
    "trainable_weights": "adapters, modules_to_save copies and fp32 master weights",
    "gradients": "one gradient per trainable weight",
    "optimizer_states": "optimizer moments (AdamW: two per trainable weight) and step counters",
    "activations": "tensors autograd saves in the forward pass for the backward pass",
    "logits": "fp32 log-probabilities and targets saved by the loss",
    "transient": "largest short-lived buffer: live logits and their gradient, a recomputed layer, a dequantized weight",
    "reference": "preference or RL training's frozen reference: a weight copy (full), nothing (adapter disabled), or precomputed log-probs",
    "value_model": "PPO's value model: a trained copy of the backbone with a scalar head, its gradients and optimizer moments",
    "reward_model": "a learned reward model (frozen, scalar head); a verifier costs nothing",
}
"""Every term of a breakdown, in display order, with what it holds."""

GIB = 2**30


@dataclass
class MemoryReport:
    """Bytes per term of one training step (``kind`` says whether estimated or measured)."""

    kind: str
    """``estimate`` or ``measured (cpu)`` / ``measured (cuda)``."""
    model: str
    breakdown: dict[str, int]
    """Term -> bytes, keys from :data:`TERMS`."""
    overhead_bytes: int = 0
    """Framework overhead outside tensors (CUDA context, allocator caching), reported apart from the total."""
    notes: dict[str, str] = field(default_factory=dict)
    load_peak_bytes: int = 0
    """Measured on CUDA: the allocator's peak while the model was built and loaded (a 4-bit model passes
    through 16-bit weights as bitsandbytes quantizes it), kept apart from the training step's peak; 0 if
    not measured."""
    phases: dict[str, int] = field(default_factory=dict)
    """Objective ``rl``: bytes that exist in one phase of the step only, not in the breakdown: the estimate's
    ``kv_cache`` (sampling's KV cache) and what ``generation``, ``scoring`` and ``training`` each hold on top of the
    kept state (the largest sets ``transient``); a CPU measurement's ``kv_cache``, counted."""

    def __post_init__(self):
        unknown = set(self.breakdown) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown term(s) {sorted(unknown)}; expected some of {', '.join(TERMS)}")
        self.breakdown = {t: int(self.breakdown[t]) for t in TERMS if t in self.breakdown}

    @property
    def total_bytes(self) -> int:
        """Sum of the breakdown (tensor memory; add ``overhead_bytes`` for what a GPU monitor shows)."""
        return sum(self.breakdown.values())

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def table(self):
        """A pandas DataFrame: one row per term with bytes, MiB, share of the total and meaning."""
        import pandas as pd

        total = self.total_bytes or 1
        rows = [{"term": t, "bytes": b, "MiB": round(b / 2**20, 2), "share": f"{b / total:.1%}", "what": TERMS[t]}
                for t, b in self.breakdown.items()]
        rows.append({"term": "total", "bytes": self.total_bytes, "MiB": round(self.total_bytes / 2**20, 2), "share": "100.0%", "what": ""})
        if self.overhead_bytes:
            rows.append({"term": "(overhead, not in total)", "bytes": self.overhead_bytes,
                         "MiB": round(self.overhead_bytes / 2**20, 2), "share": "", "what": "CUDA context and allocator"})
        if self.load_peak_bytes:
            rows.append({"term": "(peak while loading, not in total)", "bytes": self.load_peak_bytes,
                         "MiB": round(self.load_peak_bytes / 2**20, 2), "share": "", "what": "before the first step"})
        return pd.DataFrame(rows).set_index("term")

    def __str__(self) -> str:
        lines = [f"{self.kind}: {self.model}"]
        for term, b in self.breakdown.items():
            lines.append(f"  {term:<18} {b / 2**20:>12,.2f} MiB")
        lines.append(f"  {'total':<18} {self.total_bytes / 2**20:>12,.2f} MiB ({self.total_gib:.2f} GiB)")
        if self.overhead_bytes:
            lines.append(f"  {'+ overhead':<18} {self.overhead_bytes / 2**20:>12,.2f} MiB")
        if self.load_peak_bytes:
            lines.append(f"  {'(peak while loading)':<18} {self.load_peak_bytes / 2**20:>12,.2f} MiB")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<b>{self.kind}: {self.model}</b>" + self.table().to_html()
