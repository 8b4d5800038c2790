"""Which method for a model, a GPU and a dataset: what fits (labkit.memory) beside what each method bought when measured."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from labkit.vocabulary import PRECISIONS, RECIPE_METHODS, check_choice

CANDIDATES = RECIPE_METHODS
"""The methods a budget is planned for: those a ``labkit train`` recipe runs, which are also the ones whose tensors
``labkit.memory`` tells apart (rsLoRA, PiSSA and LoRA+ have LoRA's; prompt tuning, prefix tuning and IA3 appear in
the measured record only)."""

FULL_FLOPS_PER_PARAM_TOKEN = 6
"""Training FLOPs per (active) parameter and token with every weight trained: 2 forward, 4 backward (Kaplan et al. 2020, section 2.1)."""
FROZEN_FLOPS_PER_PARAM_TOKEN = 4
"""The same with the base frozen: backward still carries gradients through every layer to the inputs (2), but no
weight gradient is computed for frozen matrices (the other 2). Adapters add a negligible share."""


@dataclass(frozen=True)
class Budget:
    """What a reader brings: a model, GPUs and data."""

    model: str
    """A ``labkit.memory`` registry name (``labkit.memory.ARCHITECTURES``) or a ``config.json`` path."""
    gpu_gib: float
    """Memory of one GPU, GiB."""
    examples: int = 10_000
    """Training examples."""
    tokens_per_example: int = 512
    """Mean tokens of an example (prompt and answer): with ``examples``, the tokens of one epoch."""
    seq_len: int = 1024
    """Longest training sequence: what memory is planned for."""
    batch_size: int = 8
    """Micro-batch per GPU the run would like (a lever may cut it, with accumulation keeping the effective batch)."""
    precision: str = "bf16-mixed"
    """How the step computes: one of ``labkit.vocabulary.PRECISIONS``."""

    def __post_init__(self):
        for name in ("gpu_gib", "examples", "tokens_per_example", "seq_len", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Budget.{name} must be > 0, got {getattr(self, name)}")
        if self.tokens_per_example > self.seq_len:
            raise ValueError(f"Budget.tokens_per_example ({self.tokens_per_example}) is longer than seq_len "
                             f"({self.seq_len}); expected the mean example to fit the planned sequence")
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def epoch_tokens(self) -> int:
        return self.examples * self.tokens_per_example


def recorded_tradeoffs(record: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method, the run of the recorded learning-rate sweep at the rate the book uses (``labkit.tuning.best_rates``):
    validation exact match with its Wilson 95% interval, forgetting, trainable share, and training time and peak
    memory relative to full fine-tuning.

    ``record``: rows as ``labkit.tuning.tuning_record()`` returns them (the default). Measured on labkit's shipped
    model (``labkit.tuning.tuning_settings()``: task, budget, split); a hub model at a GPU budget can rank the
    methods differently.
    """
    from labkit.tuning import best_rates, tuning_record

    table = tuning_record() if record is None else record
    chosen = best_rates(table)
    rows = table[[rate == chosen.get(kind) for kind, rate in zip(table["kind"], table["learning rate"])]].set_index("kind")
    if "full" not in rows.index:
        raise ValueError(f"the record has no full fine-tuning run to compare with; methods: {sorted(rows.index)}")
    full = rows.loc["full"]
    return pd.DataFrame({
        "learning rate": rows["learning rate"],
        "validation exact match": rows["accuracy"],
        "ci_low": rows["ci_low"],
        "ci_high": rows["ci_high"],
        "forgetting": rows["forgetting"],
        "trainable share": rows["trainable share"],
        "time vs full": rows["train s"] / full["train s"],
        "peak memory vs full": rows["peak MiB"] / full["peak MiB"],
    })


def candidates(budget: Budget, *, methods: tuple[str, ...] = CANDIDATES, r: int = 16) -> pd.DataFrame:
    """One row per method: the estimated memory of one step at the budget's batch, whether it fits one GPU as it is,
    the cheapest levers that make it fit (``labkit.check.cheapest_fit``: a smaller micro-batch, checkpointing, an 8-bit
    optimizer... or more GPUs), the training FLOPs of one epoch, and the method's recorded trade-offs
    (:func:`recorded_tradeoffs`). Levers never switch the method here: each row plans its own method.
    """
    from labkit.check.memory import LEVERS, cheapest_fit
    from labkit.memory import estimate_memory, resolve
    from labkit.memory.estimate import CUDA_OVERHEAD_BYTES
    from labkit.memory.report import GIB

    unknown = [m for m in methods if m not in CANDIDATES]
    if unknown:
        raise ValueError(f"methods {unknown} are not planned; expected some of {', '.join(CANDIDATES)}")
    arch = resolve(budget.model)
    measured = recorded_tradeoffs()
    setup = dict(batch_size=budget.batch_size, seq_len=budget.seq_len, precision=budget.precision)
    same_method = tuple(lever for lever in LEVERS if "method" not in lever[1])
    rows = []
    for method in methods:
        options = setup | ({} if method == "full" else {"r": r})
        wanted = (estimate_memory(budget.model, method=method, **options).total_bytes + CUDA_OVERHEAD_BYTES) / GIB
        fit = cheapest_fit(budget.model, gpu_gib=budget.gpu_gib, method=method, levers=same_method, **options)
        per_token = FULL_FLOPS_PER_PARAM_TOKEN if method == "full" else FROZEN_FLOPS_PER_PARAM_TOKEN
        rows.append({
            "method": method,
            "GiB at the batch asked": wanted,
            "fits as asked": wanted <= budget.gpu_gib,
            "cheapest fit": " + ".join(fit["levers"] + ([fit["strategy"]] if (fit["gpus"] or 0) > 1 else [])) or "as asked",
            "GPUs": fit["gpus"],
            "GiB per GPU": fit["GiB"],
            "epoch PFLOP": per_token * arch.active_parameters() * budget.epoch_tokens / 1e15,
            **measured.loc[method].to_dict(),
        })
    return pd.DataFrame(rows).set_index("method")
