"""Peak tensor memory of real training steps, on the CPU or a GPU: as a trainer callback, or for one plain step.

Built on PyTorch's ``MemTracker`` (``torch.distributed._tools``), a dispatch mode that follows every
tensor storage as it is created and freed, so the peak includes temporaries that ``labkit.memory.measure_memory``'s
term-by-term accounting leaves out.
"""

from __future__ import annotations

import copy

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import PreTrainedModel, TrainerCallback


class TotalsTracker(MemTracker):
    """``MemTracker`` without per-parameter gradient hooks (they fail on frozen weights); the totals are unaffected."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        return super()._track_module_params_and_buffers(module, install_grad_hooks=False)


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
    (TRL's fused LM head, as its SFT trainer computes the loss). The same instrument as
    :class:`PeakMemory`; a first step creates the optimizer states, the second is measured.
    """
    if loss not in ("transformers", "trl-fused"):
        raise ValueError(f"loss must be 'transformers' or 'trl-fused', got {loss!r}")
    model = copy.deepcopy(model).train().requires_grad_(True)
    if loss == "trl-fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, batch_shape, generator=torch.Generator().manual_seed(seed)).to(device)

    def step():
        if loss == "trl-fused":
            (-model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs).sum().div(ids.numel()).backward()
        else:
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    tracker = TotalsTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return peak_bytes(tracker)
