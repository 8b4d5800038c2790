"""``fits_memory``: will one training step fit the GPU? If not, the cheapest lever that makes it fit."""

from __future__ import annotations

from typing import Any

from labkit.check.finding import Finding

LEVERS: tuple[tuple[str, dict, str], ...] = (
    ("a fused loss", {"logits": "fused"},
     "none in quality: a fused linear + cross-entropy kernel (TRL's use_liger_kernel=True) never stores the "
     "batch x sequence x vocabulary log-probabilities"),
    ("gradient checkpointing", {"gradient_checkpointing": "full"},
     "about a third more compute: each layer's forward runs again in backward"),
    ("8-bit AdamW", {"optimizer": "adamw_8bit"},
     "optimizer moments stored in 8 bits (bitsandbytes); usually no measurable change in quality"),
    ("a micro-batch of 1", {"batch_size": 1},
     "slower steps; set gradient_accumulation_steps to the old batch size to keep the effective batch"),
    ("LoRA instead of full fine-tuning", {"method": "lora"},
     "a different method: only low-rank adapters train, which can change what the model learns"),
    ("QLoRA (a 4-bit base)", {"method": "qlora"},
     "a different method: slower steps and a quantized base, which can change quality"),
)
"""Ways to cut a step's memory, cheapest first: (name, the ``estimate_memory`` options it changes, what it costs)."""


def _gib(model: Any, method: str, options: dict) -> float:
    from labkit.memory.estimate import CUDA_OVERHEAD_BYTES, estimate_memory
    from labkit.memory.report import GIB

    return (estimate_memory(model, method=method, **options).total_bytes + CUDA_OVERHEAD_BYTES) / GIB


def _with(method: str, options: dict, changes: dict) -> tuple[str, dict] | None:
    """The setup with ``changes`` applied, or None when the lever changes nothing or does not apply."""
    new_method = changes.get("method", method)
    if "method" in changes and new_method == "lora" and method != "full":
        return None  # LoRA only replaces full fine-tuning
    if "method" in changes and new_method == "qlora" and (method == "qlora" or options.get("quantization")):
        return None  # QLoRA replaces any unquantized method
    new_options = options | {k: v for k, v in changes.items() if k != "method"}
    if (new_method, new_options) == (method, options):
        return None
    return new_method, new_options


def _try(model: Any, method: str, options: dict, gpu_gib: float) -> float | None:
    from labkit.memory.setup import make_setup

    try:
        make_setup(method, **options)
    except ValueError:
        return None  # the combination is not a valid setup
    needed = _gib(model, method, options)
    return needed if needed <= gpu_gib else None


def cheapest_fit(model: Any, *, gpu_gib: float, method: str = "full", levers=LEVERS, **options) -> dict:
    """The cheapest way one training step fits GPUs of ``gpu_gib`` GiB, by ``labkit.memory.estimate_memory`` (plus
    the CUDA overhead): the setup as it is; else the first of ``levers`` (cheapest first, as :data:`LEVERS`) that fits
    alone; else the shortest run of them, in order, that fits together; else more GPUs (``labkit.memory.smallest_fit``
    with all those levers).

    Returns ``levers`` (names, in order; empty when the setup fits as it is), the resulting ``method`` and
    ``options``, ``GiB`` per GPU, ``gpus`` (``None`` when nothing labkit.memory knows fits) and ``strategy``.
    """
    from labkit.memory.plan import smallest_fit

    if gpu_gib <= 0:
        raise ValueError(f"gpu_gib must be > 0, got {gpu_gib}")
    one_gpu = dict(gpus=1, strategy="one GPU")
    if (needed := _try(model, method, options, gpu_gib)) is not None:
        return dict(levers=[], method=method, options=dict(options), GiB=needed, **one_gpu)
    for lever, changes, _ in levers:
        setup = _with(method, options, changes)
        if setup and (fitted := _try(model, *setup, gpu_gib)) is not None:
            return dict(levers=[lever], method=setup[0], options=setup[1], GiB=fitted, **one_gpu)
    chosen, current = [], (method, dict(options))
    for lever, changes, _ in levers:
        if (setup := _with(*current, changes)) is not None and _try(model, *setup, float("inf")) is not None:
            chosen, current = chosen + [lever], setup
            if (fitted := _try(model, *current, gpu_gib)) is not None:
                return dict(levers=chosen, method=current[0], options=current[1], GiB=fitted, **one_gpu)
    plan = smallest_fit(model, method=current[0], gpu_gib=gpu_gib, **current[1])
    return dict(levers=chosen, method=current[0], options=current[1], GiB=plan["GiB per GPU"], gpus=plan["gpus"],
                strategy=plan["strategy"])


def fits_memory(model: Any, *, gpu_gib: float, method: str = "full", **options) -> list[Finding]:
    """An error when ``labkit.memory.estimate_memory`` (plus the CUDA overhead) exceeds ``gpu_gib``, naming the
    cheapest fix found by :func:`cheapest_fit`.

    ``model``: what ``estimate_memory`` takes (a registry name, a config, a model); ``options``: its setup
    (batch_size, seq_len, precision, ...). The estimate models a CUDA GPU; it is a plan, not a measurement.
    """
    if gpu_gib <= 0:
        raise ValueError(f"gpu_gib must be > 0, got {gpu_gib}")
    needed = _gib(model, method, options)
    if needed <= gpu_gib:
        return []
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "name_or_path", None) or str(model)[:60]
    where = f"{name}, {method} with {options or 'the default setup'}"
    fit = cheapest_fit(model, gpu_gib=gpu_gib, method=method, **options)
    changes = [c for lever, c, _ in LEVERS if lever in fit["levers"]]
    described = ", ".join(_describe(c) for c in changes)
    if fit["gpus"] == 1 and len(fit["levers"]) == 1:
        cost = next(cost for lever, _, cost in LEVERS if lever == fit["levers"][0])
        fix = f"{fit['levers'][0]} ({described}): an estimated {fit['GiB']:.1f} GiB. Cost: {cost}."
    elif fit["gpus"] == 1:
        fix = f"{' + '.join(fit['levers'])} ({described}): an estimated {fit['GiB']:.1f} GiB"
    elif fit["gpus"]:
        fix = (f"no single-GPU setup fits; {fit['gpus']} GPUs with {fit['strategy']} and "
               f"{_describe(fit['options'] | {'method': fit['method']})}: an estimated {fit['GiB']:.1f} GiB per GPU")
    else:
        fix = f"no setup labkit.memory knows fits GPUs of {gpu_gib} GiB ({fit['strategy']}): a larger GPU"
    return [Finding("fits_memory", "error",
                    f"{where}: one training step needs an estimated {needed:.1f} GiB (labkit.memory.estimate_memory "
                    f"plus the CUDA overhead); expected at most the GPU's {gpu_gib} GiB.", fix)]


def _describe(changes: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in changes.items())
