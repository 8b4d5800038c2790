"""One preference (DPO) step as ``measure_memory`` runs it: the policy, its frozen reference, and the loss.

The step is TRL 1.16's ``DPOTrainer`` step with labkit.dpo's functions (equal to TRL's loss values): the
B chosen and B rejected rows in one forward of 2B rows, the reference's log-probs under ``no_grad`` from
a frozen copy (full fine-tuning), from the policy with its adapter disabled (adapter methods), or
computed before the step (``precompute_ref_log_probs``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.memory.setup import TrainingSetup


def build_reference(setup: TrainingSetup, build: Callable[[TrainingSetup], torch.nn.Module]) -> torch.nn.Module | None:
    """The separate frozen reference model a step holds, or ``None`` (no reference, or the adapter-disabled policy).

    ``build(setup)`` makes a model; the reference is the same random base (same seed), frozen, in eval mode.
    """
    if setup.objective != "preference" or setup.reference != "model" or setup.adapters:
        return None
    return build(setup).eval().requires_grad_(False)


def preference_batch(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A preference batch (chosen rows, then rejected rows) of random ``ids``: every token after the first is scored."""
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "completion_mask": ones}


def reference_logps(policy: torch.nn.Module, reference: torch.nn.Module | None, batch: dict) -> torch.Tensor:
    """The reference's per-sequence log-probs under ``no_grad``: from ``reference``, else the policy with its adapter disabled."""
    from labkit.dpo import sequence_logprobs

    with torch.no_grad():
        if reference is not None:
            return sequence_logprobs(reference, batch)
        if hasattr(policy, "disable_adapter"):  # TRL: use_adapter(model, adapter_name=None) on a peft policy
            with policy.disable_adapter():
                return sequence_logprobs(policy, batch)
        return sequence_logprobs(policy, batch)


class _Split:
    """A list-like sink for saved-tensor records that switches target when the policy's forward returns."""

    def __init__(self, first: list, second: list):
        self.target, self.second = first, second

    def append(self, item) -> None:
        self.target.append(item)

    def switch(self, *_) -> None:
        self.target = self.second


def preference_loss(policy: torch.nn.Module, reference: torch.nn.Module | None, batch: dict, setup: TrainingSetup,
                    record: Callable, forward_records: list, loss_records: list,
                    precomputed: torch.Tensor | None = None) -> torch.Tensor:
    """The mean DPO loss of ``batch``, recording what the policy's forward saves into ``forward_records`` and
    what the log-probabilities and loss save into ``loss_records`` (``record(sink)``: measure's recorder).

    The reference comes from ``precomputed`` when given, else from :func:`reference_logps` (after the
    policy's forward, as TRL runs it); ``reference='none'`` scores against zeros (reference-free).
    """
    from labkit.dpo import dpo_loss, sequence_logprobs

    sink = _Split(forward_records, loss_records)
    hook = policy.register_forward_hook(sink.switch)
    try:
        with record(sink):
            policy_chosen, policy_rejected = sequence_logprobs(policy, batch).chunk(2)
    finally:
        hook.remove()
    if precomputed is not None:
        ref = precomputed
    elif setup.reference == "model":
        ref = reference_logps(policy, reference, batch)
    else:
        ref = torch.zeros(2 * policy_chosen.numel(), device=policy_chosen.device)
    ref_chosen, ref_rejected = ref.chunk(2)
    with record(loss_records):
        losses, _, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
        return losses.mean()
