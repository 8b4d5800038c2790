"""``measure_memory``: the memory of real training steps, split into the same terms ``estimate_memory`` reports.

On the CPU it counts bytes exactly: parameters, gradients and optimizer states from the tensors
themselves, activations as the storages autograd saves (``torch.autograd.graph.saved_tensors_hooks``,
each storage once, parameters excluded). On CUDA it adds the peak of ``torch.cuda.max_memory_allocated``
over a few steps; what the peak holds beyond the kept terms is reported as ``transient``, and the peak
while the model loads (``load_peak_bytes``) apart from it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import torch

from labkit.memory.architectures import Architecture, check_setup, resolve
from labkit.memory.build import build_model, make_optimizer
from labkit.memory.preference import build_reference, preference_batch, preference_loss, reference_logps
from labkit.memory.report import MemoryReport
from labkit.memory.setup import TrainingSetup, make_setup

MEASURABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3", "mixtral", "qwen3_moe", "gemma2", "gemma3_text")

def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` not already in ``seen`` (which is updated)."""
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@contextmanager
def _record_saved(into: list[tuple[weakref.ref, int, int]], exclude: set[int]):
    """Append ``(weak reference, storage pointer, bytes)`` for every tensor autograd saves inside the block.

    Only tensors still alive afterwards count (:func:`_alive_bytes`): a graph whose result is
    dropped (e.g. DoRA's detached weight norm) frees what it saved before backward ever runs.
    """
    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            into.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _alive_bytes(records: list[tuple[weakref.ref, int, int]], seen: set[int]) -> int:
    """Bytes of the distinct storages of recorded tensors that are still alive (``seen`` is updated)."""
    total = 0
    for ref, ptr, nbytes in records:
        if ref() is not None and ptr not in seen:
            seen.add(ptr)
            total += nbytes
    return total


def _check_measurable(arch: Architecture, setup: TrainingSetup, device: str) -> None:
    if arch.model_type not in MEASURABLE_MODEL_TYPES:
        raise ValueError(f"measure builds {', '.join(MEASURABLE_MODEL_TYPES)} models; {arch.name} is {arch.model_type!r}")
    if setup.world_size != 1 or setup.sharding != "none" or setup.offload_optimizer:
        raise ValueError("measure runs one process on one device; world_size, sharding and offload_optimizer are "
                         "for estimate_memory (labkit.sharding measures a sharded run's per-rank bytes)")
    if setup.logits != "full":
        raise ValueError(f"measure runs transformers' own loss; logits must be 'full', got {setup.logits!r}")
    if setup.attention_groups > 1 and setup.attn_implementation != "eager":
        raise ValueError("measure runs labkit.longcontext's S²-Attn, which keeps each group's probabilities (its 5-D group "
                         "tensors take SDPA's math kernel); with attention_groups > 1 expected attn_implementation 'eager', "
                         f"got {setup.attn_implementation!r} (estimate_memory models a fused grouped kernel for it)")
    if setup.quantization == "int8":
        raise ValueError("measure supports quantization None, 'nf4' or 'nf4-dq'; got 'int8'")
    if device == "cpu":
        if setup.attn_implementation == "flash":
            raise ValueError("attn_implementation 'flash' needs CUDA; on the CPU use 'eager' or 'sdpa'")
        if setup.optimizer.startswith("paged"):
            raise ValueError(f"optimizer {setup.optimizer!r} pages to and from GPU memory; on the CPU use 'adamw_torch' or 'adamw_8bit'")


def measure_memory(model: Any, *, method: str, device: str | None = None, steps: int = 2, seed: int = 0, **options) -> MemoryReport:
    """Measured bytes per term of training ``model`` (random weights) with ``method``; options as in ``estimate_memory``.

    ``device``: ``cpu`` (exact tensor accounting) or ``cuda`` (also the allocator's peak); default: CUDA if available.
    ``steps`` full optimizer steps run; the last one is accounted. ``objective='preference'``: a DPO step
    (:mod:`labkit.memory.preference`) on ``2 * batch_size`` rows, with the reference's bytes as ``reference``.
    ``objective='rl'``: sampling, scoring and a policy update (:class:`labkit.memory.rl.RLStep`); the KV cache
    counted in ``phases['kv_cache']``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; expected 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    arch = resolve(model)
    setup = make_setup(method, **{"attn_implementation": arch.default_attention, **options})
    check_setup(arch, setup)
    _check_measurable(arch, setup, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net = build_model(arch, setup, seed=seed, device=device)
    reference = build_reference(setup, lambda s: build_model(arch, make_setup("full", precision=s.precision,
                                attn_implementation=s.attn_implementation), seed=seed, device=device))
    rl = None
    if setup.objective == "rl":
        from labkit.memory.rl import RLStep

        rl = RLStep(arch, setup, lambda s: build_model(arch, s, seed=seed, device=device), seed=seed)
    load_peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    params = list(net.parameters())
    trainable = [p for p in params if p.requires_grad]
    masters = [p.detach().float() for p in trainable] if setup.precision.endswith("-mixed") else None
    optimizer = make_optimizer(setup, masters if masters is not None else trainable)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, arch.vocab_size, (setup.sequences, setup.seq_len), generator=generator).to(device)
        exclude: set[int] = {p.untyped_storage().data_ptr() for p in params}
        forward_records: list = []
        loss_records: list = []
        if rl is not None:
            exclude |= {p.untyped_storage().data_ptr() for p in (rl.value_model.parameters() if rl.value_model else ())}
            prompts = ids[: setup.batch_size, : setup.seq_len - setup.completion_len]
            loss, kv_cache = rl.run(net, prompts, lambda sink: _record_saved(sink, exclude), forward_records, loss_records)
        elif setup.objective == "preference":
            batch = preference_batch(ids)
            precomputed = reference_logps(net, reference, batch) if setup.reference == "precomputed" else None
            loss = preference_loss(net, reference, batch, setup, lambda sink: _record_saved(sink, exclude),
                                   forward_records, loss_records, precomputed=precomputed)
            reference_held = (_storage_bytes(reference.parameters(), set()) if reference is not None
                              else _storage_bytes([precomputed], set()) if precomputed is not None else 0)
        else:
            with _record_saved(forward_records, exclude):
                logits = net(input_ids=ids).logits
            with _record_saved(loss_records, exclude):
                loss = base.loss_function(logits=logits, labels=ids, vocab_size=arch.vocab_size)
            del logits
        seen: set[int] = set()
        activation_bytes = _alive_bytes(forward_records, seen)
        logits_bytes = _alive_bytes(loss_records, seen)
        del forward_records, loss_records
        loss.backward()
        del loss
        if masters is not None:  # move each gradient onto its fp32 master, freeing the 16-bit one
            for master, p in zip(masters, trainable):
                master.grad = p.grad.float()
                p.grad = None
        grad_bytes = _storage_bytes((p.grad for p in (masters or trainable) if p.grad is not None), set())
        optimizer.step()
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        optimizer_bytes = _storage_bytes(state, set())
        if masters is not None:
            with torch.no_grad():
                for master, p in zip(masters, trainable):
                    p.copy_(master)
        optimizer.zero_grad(set_to_none=True)
        for p in trainable:
            p.grad = None
        value_bytes = rl.update() if rl is not None else 0
    breakdown = _weight_bytes(net, trainable, masters)
    breakdown.update(gradients=grad_bytes, optimizer_states=optimizer_bytes,
                     activations=activation_bytes, logits=logits_bytes)
    if setup.objective == "preference":
        breakdown["reference"] = reference_held
    if rl is not None:
        breakdown |= rl.held_bytes() | {"value_model": value_bytes}
    overhead = 0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        breakdown["transient"] = max(0, peak - sum(breakdown.values()))
        overhead = torch.cuda.memory_reserved() - peak
    return MemoryReport(kind=f"measured ({device})", model=arch.name, breakdown=breakdown, overhead_bytes=overhead,
                        notes={"setup": repr(setup)}, load_peak_bytes=load_peak,
                        phases={"kv_cache": kv_cache} if rl is not None else {})


def _weight_bytes(net: torch.nn.Module, trainable: list[torch.Tensor], masters: list[torch.Tensor] | None) -> dict[str, int]:
    """weights (frozen, or all in full fine-tuning), quant_constants and trainable_weights (adapters, copies, masters)."""
    seen: set[int] = set()
    frozen = [p for p in net.parameters() if not p.requires_grad]
    if frozen:
        weights = _storage_bytes(frozen, seen)
        trainable_bytes = _storage_bytes(trainable, seen)
    else:  # full fine-tuning: the trainable weights are the weights
        weights, trainable_bytes = _storage_bytes(trainable, seen), 0
    trainable_bytes += _storage_bytes(masters or [], seen)
    constants: list[torch.Tensor] = []
    for p in frozen:  # bitsandbytes' Params4bit: absmax, code tables, offset, nested absmax state
        state = getattr(p, "quant_state", None)
        while state is not None:
            constants += [t for t in (state.absmax, state.code, state.offset) if torch.is_tensor(t)]
            state = getattr(state, "state2", None)
    return {"weights": weights, "quant_constants": _storage_bytes(constants, seen), "trainable_weights": trainable_bytes}
