"""Peak tensor memory of real training steps, on the CPU or a GPU: as a trainer callback, or for one step (timed too).

Built on PyTorch's ``MemTracker`` (``torch.distributed._tools``), a dispatch mode that follows every
tensor storage as it is created and freed, so the peak includes temporaries that ``labkit.memory.measure_memory``'s
term-by-term accounting leaves out.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import PreTrainedModel, TrainerCallback


class TotalsTracker(MemTracker):
    """``MemTracker`` keeping only what the step's totals and peak need: every storage, followed by its dispatch
    mode. The per-module statistics are dropped — their hooks fail when a module runs several times in one step
    (KTO runs policy and reference twice: on its rows, then on mismatched ones; GRPO runs the policy once per
    sampled token in ``generate()`` and then in chunks for the loss) and on frozen weights' gradient hooks. A
    module's weights and buffers are still counted as such when it first runs."""

    def _pre_fw_hook(self, module, inputs):
        if module not in self.memory_tracking:
            self.memory_tracking[module] = None  # seen: its parameters and buffers are tracked once
            self._track_module_params_and_buffers(module, install_grad_hooks=False)

    def _post_fw_hook(self, module, inputs, outputs):
        pass

    def _pre_bw_hook(self, module, args):
        pass

    def _post_bw_hook(self, module, args):
        pass

    def _update_peak_stats(self, peak_state):
        for dev, dev_snap in self._curr_mem_snap.items():  # the global peak only (no per-module peaks)
            if self._peak_mem.get(dev, 0) < dev_snap["Total"]:
                self._peak_mem[dev] = dev_snap["Total"]
                self._peak_mem_snap[dev] = copy.deepcopy(dev_snap)


def peak_bytes(tracker: MemTracker) -> int:
    """The tracker's peak, summed over devices."""
    return sum(device["Total"] for device in tracker.get_tracker_snapshot("peak").values())


class PeakMemory(TrainerCallback):
    """Measures the peak tensor memory of one training step (forward, backward, optimizer step).

    Uses PyTorch's ``MemTracker`` (a dispatch mode that follows every tensor storage, CPU or CUDA);
    also records the shape of the batch the step trained on, so an estimate can use the same one.
    """

    def __init__(self, step: int = 1):
        self.step, self.peak_bytes, self.peak_breakdown, self.batch_shape = step, None, None, None
        self._tracker = self._hook = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step != self.step:
            return

        def record(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and self.batch_shape is None:
                self.batch_shape = tuple(ids.shape)

        self._hook = model.register_forward_pre_hook(record, with_kwargs=True)
        self._tracker = TotalsTracker()
        self._tracker.track_external(model, getattr(optimizer, "optimizer", optimizer))
        self._tracker.__enter__()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._tracker is not None:  # gradient accumulation: it follows one forward per module unless reset
            self._tracker.reset_mod_stats()

    def on_step_end(self, args, state, control, **kwargs):
        if self._tracker is None:
            return
        self._tracker.__exit__(None, None, None)
        self._hook.remove()
        peaks = self._tracker.get_tracker_snapshot("peak")
        self.peak_bytes = peak_bytes(self._tracker)
        self.peak_breakdown = {str(getattr(k, "value", k)): v for dev in peaks.values() for k, v in dev.items() if k != "Total"}
        self._tracker = self._hook = None


def step_peak_bytes(model: PreTrainedModel, batch_shape: tuple[int, int], *, loss: str = "transformers", seed: int = 0) -> int:
    """Peak tensor bytes of one full fine-tuning step (AdamW) of a copy of ``model`` on a random batch.

    ``loss``: ``transformers`` (the model's own loss: the step ``labkit.memory`` models) or ``trl-fused``
    (TRL's fused LM head, as its SFT trainer computes the loss). :func:`step_cost` without the timing.
    """
    return step_cost(model, batch_size=batch_shape[0], seq_len=batch_shape[1], loss=loss, seed=seed, timed_steps=0).peak_bytes


@dataclass(frozen=True)
class StepCost:
    """What one optimizer step of a training setup costs, measured."""

    peak_bytes: int
    """Peak tensor bytes of the step (forward and backward of every micro-batch, then the optimizer)."""
    seconds: float
    """Median wall time of the step, measured without the memory tracker (``nan`` when none was timed)."""
    tokens: int
    """Tokens the step trained on: micro-batch x accumulation x sequence length."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def step_cost(model: PreTrainedModel, *, batch_size: int, seq_len: int, accumulation: int = 1,
              gradient_checkpointing: bool = False, optimizer: str = "adamw_torch", loss: str = "transformers",
              autocast_dtype: torch.dtype | None = None, timed_steps: int = 2, seed: int = 0) -> StepCost:
    """Peak memory and time of one full fine-tuning step of a copy of ``model`` on random tokens.

    The step runs ``accumulation`` micro-batches of ``batch_size`` x ``seq_len`` tokens, each with its own
    forward and backward, then one ``optimizer`` step (``adamw_torch`` or ``adamw_8bit``, bitsandbytes).
    ``gradient_checkpointing`` recomputes each decoder layer in backward. ``loss``: ``transformers`` (the
    model's own loss: the step ``labkit.memory.estimate_memory`` models) or ``trl-fused`` (TRL's fused LM
    head, the loss its SFT trainer computes). ``autocast_dtype``: the forward and backward under autocast
    over the fp32 weights, as the trainers run 16-bit mixed precision. A first step creates the optimizer
    states; ``timed_steps`` more are timed; one more is measured with the same instrument as :class:`PeakMemory`.
    """
    from labkit.memory.build import make_optimizer
    from labkit.memory.setup import make_setup

    if loss not in ("transformers", "trl-fused"):
        raise ValueError(f"loss must be 'transformers' or 'trl-fused', got {loss!r}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("accumulation", accumulation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if optimizer not in ("adamw_torch", "adamw_8bit"):
        raise ValueError(f"optimizer must be 'adamw_torch' or 'adamw_8bit', got {optimizer!r}")
    model = copy.deepcopy(model).train().requires_grad_(True)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    if loss == "trl-fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
    optim = make_optimizer(make_setup("full", optimizer=optimizer), list(model.parameters()))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    micro_batches = [torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
                     for _ in range(accumulation)]

    def step(tracker: MemTracker | None = None):
        for ids in micro_batches:
            if tracker is not None:  # it follows one forward per module per step unless its module stats are reset
                tracker.reset_mod_stats()
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                if loss == "trl-fused":
                    micro_loss = (-model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs).sum().div(ids.numel())
                else:
                    micro_loss = model(input_ids=ids, labels=ids).loss
            (micro_loss / accumulation).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(timed_steps):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    tracker = TotalsTracker()
    tracker.track_external(model, optim)
    with tracker:
        step(tracker)
    return StepCost(peak_bytes=peak_bytes(tracker), seconds=statistics.median(times) if times else math.nan,
                    tokens=batch_size * seq_len * accumulation)


def reference_forward_peak(model, *, method: str, seed: int = 0, **options) -> int:
    """Measured peak bytes the reference's ``no_grad`` forward allocates on top of what exists (CPU, MemTracker).

    ``model`` and ``options`` as in ``measure_memory`` (``objective='preference'``, ``reference='model'``
    implied). Weights are not counted: only the short-lived tensors of the reference's forward and log-probs.
    """
    from labkit.memory.architectures import resolve
    from labkit.memory.build import build_model
    from labkit.memory.preference import build_reference, preference_batch, reference_logps
    from labkit.memory.setup import make_setup

    arch = resolve(model)
    setup = make_setup(method, **{"objective": "preference", "reference": "model", **options})
    policy = build_model(arch, setup, seed=seed)
    reference = build_reference(setup, lambda s: build_model(arch, make_setup("full", precision=s.precision,
                                attn_implementation=s.attn_implementation), seed=seed))
    ids = torch.randint(0, arch.vocab_size, (setup.sequences, setup.seq_len), generator=torch.Generator().manual_seed(seed))
    module = reference if reference is not None else policy
    weights = sum(t.untyped_storage().nbytes() for t in {id(t): t for t in (*module.parameters(), *module.buffers())}.values())
    tracker = TotalsTracker()
    tracker.track_external(module)
    with tracker:
        reference_logps(policy, reference, preference_batch(ids))
    return peak_bytes(tracker) - weights
