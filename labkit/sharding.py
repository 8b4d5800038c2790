"""Sharded data parallel (FSDP2): each of N processes keeps 1/N of the weights, gradients and optimizer state.

PyTorch's ``fully_shard`` turns every parameter into a DTensor split across the processes. Before a
layer runs forward or backward, its full weights are gathered (all-gather) and dropped after; each
gradient is summed and split back into shards (reduce-scatter), so each process updates only its
slice — ZeRO stage 3's scheme (Rajbhandari et al. 2020). It runs on the CPU over gloo, which
accelerate's FSDP plugin does not, so this module writes the loop out.

:func:`run` trains the shipped model for a few steps: sharded when started by ``torch.distributed.run``
with several processes (:func:`labkit.distributed.launch` with ``entry="labkit.sharding"``), plain in
one process. Every rank reports the bytes it holds, measured from its tensors; the sharded run saves a
distributed checkpoint (one file per rank) that :func:`gather_checkpoint` turns into one ordinary state dict.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from labkit.distributed import WEIGHTS, command_line, rank_file

SHARDED_CHECKPOINT = "sharded-checkpoint"
"""Folder a sharded run saves with ``torch.distributed.checkpoint``: a ``.distcp`` file per rank and the metadata."""


def local_bytes(tensors) -> int:
    """Bytes of the part of each tensor this process holds (a DTensor's local shard; a plain tensor whole)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def training_batches(tokenizer, *, steps: int, batch_size: int, seed: int, tasks_: tuple[str, ...]) -> list[dict]:
    """``steps`` global batches of ``batch_size`` padded completion rows, identical in every process."""
    from labkit import tasks
    from labkit.data import tokenize_dataset
    from labkit.data.packing import padded_batches

    rows = tokenize_dataset(tasks.verifiable_tasks(steps * batch_size, seed=seed, fmt="completion", tasks=list(tasks_)),
                            tokenizer, "completion")
    return padded_batches(rows, tokenizer.pad_token_id, batch_size)


def run(output_dir: str | Path, *, steps: int, batch_size: int, learning_rate: float = 3e-4, seed: int = 0,
        tasks_: tuple[str, ...] = ("flip",)) -> dict:
    """AdamW on the shipped model (fp32) for ``steps`` global batches of ``batch_size`` rows, split across the processes.

    The loss is the token mean over the *global* batch (each process sums its tokens' losses and divides by
    the global count), so one process and N shards compute the same gradient. Writes this rank's
    :func:`labkit.distributed.rank_file`; rank 0 also writes the gathered weights (:data:`labkit.distributed.WEIGHTS`).
    """
    import torch.distributed as dist
    from safetensors.torch import save_file

    import labkit
    from labkit.accumulation import predicted_tokens, summed_token_loss

    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must split evenly across {world} processes")
    torch.manual_seed(seed)
    model, tokenizer = labkit.load_base(dtype=torch.float32)
    model.train()
    if sharded:
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:  # each decoder layer is gathered, used and freed on its own
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    share = batch_size // world
    losses, gradient_bytes = [], 0
    for batch in training_batches(tokenizer, steps=steps, batch_size=batch_size, seed=seed, tasks_=tasks_):
        mine = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
        loss = summed_token_loss(model, mine) / predicted_tokens(batch)
        (loss * world).backward()  # FSDP averages the shards' gradients over the processes; the sum is wanted
        gradient_bytes = local_bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total = loss.detach().clone()
        if sharded:
            dist.all_reduce(total)
        losses.append(float(total))
    result = {"rank": rank, "world_size": world, "losses": losses,
              "parameter_bytes": local_bytes(model.parameters()), "gradient_bytes": gradient_bytes,
              "optimizer_bytes": local_bytes(v for s in optimizer.state.values() for v in s.values()
                                             if torch.is_tensor(v) and v.dim() > 0)}
    output_dir = Path(output_dir)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=output_dir / SHARDED_CHECKPOINT)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = model.state_dict()
    rank_file(output_dir, rank).write_text(json.dumps(result))
    if rank == 0:
        save_file({k: v.detach().clone() for k, v in full.items()}, output_dir / WEIGHTS)
    if sharded:
        dist.destroy_process_group()
    return result


def gather_checkpoint(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded checkpoint (:data:`SHARDED_CHECKPOINT`), read in one process without a
    process group: what ``load_state_dict`` of a plain model takes."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / ".metadata").exists():
        raise FileNotFoundError(f"{checkpoint_dir} holds no torch.distributed.checkpoint (.metadata is missing)")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "gathered.pt"
        dcp_to_torch_save(checkpoint_dir, target)
        return torch.load(target, weights_only=True)["model"]


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
