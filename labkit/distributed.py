"""Data parallel training in several processes, launched and measured: the same run as one process accumulating.

With N processes, each holds a full copy of the model, computes the gradient of its own micro-batch,
and an all-reduce sums the N gradients before every optimizer step (PyTorch's DistributedDataParallel,
which transformers' Trainer wraps the model in when it is launched by ``torch.distributed.run``). One
process accumulating N micro-batches computes the same sum, so both should end with the same weights.

:func:`run` is one SFT run in this process (any rank); :func:`launch` starts it in ``processes``
fresh processes with ``torch.distributed.run`` and returns what every rank wrote. On the CPU the
processes talk over gloo: transformers needs ``ACCELERATE_USE_CPU=1`` for that (``accelerate launch
--cpu --num_processes 2`` starts one process; ``--multi_gpu`` without a GPU starts two that never
synchronise). gloo can abort a process at exit after its work is done, so a launch is judged by the
files every rank wrote, and a nonzero exit status is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

WEIGHTS = "weights.safetensors"
"""Written by rank 0: the trained weights."""


def rank_file(output_dir: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its result: losses, seconds, peak bytes, world size, all-reduce time."""
    return Path(output_dir) / f"rank{rank}.json"


def allreduce_seconds(numel: int, *, repeats: int = 5) -> float:
    """Median time of one all-reduce of ``numel`` fp32 values across the process group (what each step adds)."""
    import statistics

    buffer = torch.ones(numel, device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    times = []
    for _ in range(repeats):
        torch.distributed.barrier()
        start = time.perf_counter()
        torch.distributed.all_reduce(buffer)
        if buffer.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(output_dir: str | Path, *, steps: int, batch_size: int, accumulation: int = 1, profile: str = "cpu-tiny",
        tasks_: tuple[str, ...] = ("flip",), examples: int = 400, seed: int = 0, learning_rate: float | None = None) -> dict:
    """Fully fine-tune ``profile``'s model for ``steps`` optimizer steps of ``batch_size`` x ``accumulation``
    sequences per process; under ``torch.distributed.run`` every process is one data-parallel rank.

    Writes :func:`rank_file` for this rank (and :data:`WEIGHTS` on rank 0) to ``output_dir``; returns the result.
    """
    import labkit
    from labkit import tasks
    from labkit.memory import PeakMemory
    from labkit.train import sft, sft_config

    chosen = labkit.get_profile(profile)
    torch.manual_seed(seed)
    model, tokenizer = labkit.load_model(chosen)
    train = tasks.verifiable_tasks(examples, seed=seed, fmt="completion", tasks=list(tasks_))
    overrides = dict(max_steps=steps, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     logging_steps=1, disable_tqdm=True, seed=seed, data_seed=seed)
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    config = sft_config(chosen, kind="full", output_dir=str(output_dir), **overrides)
    peak = PeakMemory(step=min(1, steps - 1))
    start = time.perf_counter()
    trainer = sft(model, tokenizer, train, config, callbacks=[peak])
    seconds = time.perf_counter() - start
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    n_params = sum(p.numel() for p in trainer.model.parameters())
    result = {"rank": rank, "world_size": trainer.args.world_size, "wrapped_in": type(trainer.model_wrapped).__name__,
              "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h], "train_seconds": seconds,
              "peak_bytes": peak.peak_bytes, "parameters": n_params,
              "allreduce_seconds": allreduce_seconds(n_params) if distributed and trainer.args.world_size > 1 else 0.0}
    rank_file(output_dir, rank).write_text(json.dumps(result))
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().cpu() for k, v in trainer.model.state_dict().items()}, Path(output_dir) / WEIGHTS)
    return result


def launch(output_dir: str | Path, *, processes: int, device: str = "cpu", entry: str = "labkit.distributed",
           timeout: float = 600, **options) -> list[dict]:
    """``entry``'s ``run`` in ``processes`` fresh processes; every rank's result, by rank.

    Several processes start under ``torch.distributed.run`` (one data-parallel rank each); one process
    starts plainly, with no process group. ``entry``: this module (replicated data parallel) or
    ``labkit.sharding`` (FSDP2). ``device``: ``cpu`` (gloo) or ``cuda`` (NCCL, one GPU per process).
    ``options``: the entry's ``run`` keywords. Raises ``RuntimeError`` with the launcher's output when a
    rank wrote no result.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if entry not in ("labkit.distributed", "labkit.sharding"):
        raise ValueError(f"entry must be 'labkit.distributed' or 'labkit.sharding', got {entry!r}")
    if entry == "labkit.sharding" and device != "cpu":
        raise ValueError("labkit.sharding runs its processes on the CPU (gloo); use device='cpu'")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if device == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(f"{processes} processes need {processes} GPUs; this machine has {torch.cuda.device_count()}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*output_dir.glob("rank*.json"), output_dir / WEIGHTS]:  # a result must come from this launch
        stale.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if device == "cpu":
        env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    args = [sys.executable, *launcher, "-m", entry, str(output_dir), "--options", json.dumps(options)]
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    missing = [r for r in range(processes) if not rank_file(output_dir, r).exists()]
    if missing or not (output_dir / WEIGHTS).exists():
        raise RuntimeError(f"ranks {missing} wrote no result (exit status {finished.returncode}):\n{finished.stderr[-3000:]}")
    results = [json.loads(rank_file(output_dir, r).read_text()) for r in range(processes)]
    for result in results:
        result["exit_status"] = finished.returncode  # gloo may abort at exit after the work is done
    return results


def weight_difference(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between the :data:`WEIGHTS` two runs' rank 0 wrote (folders ``a`` and ``b``)."""
    from safetensors.torch import load_file

    first, second = load_file(Path(a) / WEIGHTS), load_file(Path(b) / WEIGHTS)
    if first.keys() != second.keys():
        raise ValueError(f"the runs hold different tensors: {sorted(first.keys() ^ second.keys())[:5]}")
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def command_line(run_function, description: str, argv: list[str] | None = None) -> None:
    """``python -m <module> OUTPUT_DIR --options JSON``: call ``run_function(OUTPUT_DIR, **options)``, as :func:`launch` starts it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("output_dir")
    parser.add_argument("--options", default="{}", help="run()'s keywords, as JSON")
    parsed = parser.parse_args(argv)
    options = json.loads(parsed.options)
    if "tasks_" in options:
        options["tasks_"] = tuple(options["tasks_"])
    run_function(parsed.output_dir, **options)


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
