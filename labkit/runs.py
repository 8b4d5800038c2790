"""A run directory: a recipe trained with TRL, checked for memory first, checkpointed, resumable after a kill.

Layout of ``output_dir``: ``recipe.yaml`` (the resolved recipe), ``checkpoint-<step>/`` (every ``save_steps``),
``tensorboard/`` (``labkit.monitor`` event files), ``model/`` (the trained weights or adapter, with the tokenizer
and its chat template), ``train.json`` (losses, data hash, end-of-sequence check, memory check, resume point,
records skipped) and, with ``on_bad_records: skip``, ``rejects.jsonl`` (each left-out record, its index and errors).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from labkit.recipe import Recipe, RecipeError, run_recipe, save_recipe

MODEL_DIR = "model"
"""Subfolder of a run with the trained model (or adapter) and its tokenizer."""
TENSORBOARD_DIR = "tensorboard"
TRAIN_RESULT = "train.json"
REJECTS_FILE = "rejects.jsonl"
"""Data-file records left out under ``on_bad_records: skip``: one JSON line each (index, errors, record)."""
CHECKED_ROWS = 64
"""Training rows whose last token is checked to be the end-of-sequence token."""


class MemoryRefusal(RuntimeError):
    """A run whose estimated memory exceeds the device's; the message gives both numbers."""


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step (one with ``trainer_state.json``,
    which the Trainer writes last: a folder cut short by a kill is skipped), or ``None``."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def device_memory_bytes(device: str) -> int:
    """Total memory of the first CUDA GPU, or the host's physical memory for ``cpu``."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_check(recipe: Recipe, profile) -> dict:
    """``labkit.memory.estimate_memory`` for the resolved ``recipe`` beside the device's memory (or
    ``recipe.memory_gib``); raises :class:`MemoryRefusal` when the estimate does not fit. No weights are loaded."""
    from transformers import AutoConfig

    from labkit.memory import estimate_memory
    from labkit.profiles import model_path

    setup = dict(batch_size=recipe.batch_size, seq_len=recipe.max_seq_len, precision=profile.precision,
                 gradient_checkpointing="none" if profile.device == "cpu" else "full")
    if recipe.method != "full":
        setup["r"] = recipe.r
    if recipe.objective in ("dpo", "kto"):  # KTO also scores a second (mismatched) sequence per row
        setup |= dict(objective="preference", reference="model" if recipe.method == "full" else "none")
    config = AutoConfig.from_pretrained(model_path(profile))
    report = estimate_memory(config, method=recipe.method, device=profile.device, **setup)
    available = recipe.memory_gib * 2**30 if recipe.memory_gib else device_memory_bytes(profile.device)
    numbers = {"estimated_gib": report.total_bytes / 2**30, "available_gib": available / 2**30,
               "device": profile.device}
    if report.total_bytes > available:
        raise MemoryRefusal(f"the run needs an estimated {numbers['estimated_gib']:.2f} GiB ({recipe.method}, batch "
                            f"{recipe.batch_size} x {recipe.max_seq_len} tokens) and the {profile.device} has "
                            f"{numbers['available_gib']:.2f} GiB; lower batch_size or max_seq_len, use qlora, or "
                            f"pass --force to try anyway. Per term:\n{report}")
    return numbers


def _read_jsonl(path: Path) -> list:
    if not path.is_file():
        raise RecipeError(f"data {path}: no such file")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_rows(recipe: Recipe, rejected: list | None = None):
    """The training rows (a ``datasets.Dataset`` in TRL's format) and their SHA-256 (over canonical JSON).

    A data file is validated first (``labkit.data``): with ``on_bad_records: error`` any bad record raises
    ``DataFormatError`` naming each one; with ``skip`` the bad ones are left out and appended to ``rejected``
    as ``{"index", "errors", "record"}`` (an error still when none is left). Nothing is dropped silently.
    """
    from datasets import Dataset

    from labkit import tasks
    from labkit.data.validation import drop_invalid, format_error, validate

    if recipe.tasks:
        make = {"sft": tasks.verifiable_tasks, "dpo": tasks.preference_pairs, "kto": tasks.unpaired_preferences}
        rows = make[recipe.objective](recipe.train_examples, seed=recipe.seed, split="train", fmt="completion",
                                      tasks=recipe.tasks).to_list()
    else:
        rows = _read_jsonl(Path(recipe.data))
        options = dict(allow_extra=("task", "answer"))
        skip = recipe.on_bad_records == "skip"
        kept, errors = drop_invalid(rows, recipe.data_format, **options) if skip else (rows, [])
        if not kept or not skip:
            validate(rows, recipe.data_format, **options)
        if rejected is not None:
            rejected += [{"index": i, "errors": [format_error(e) for e in errors if e[0] == i], "record": rows[i]}
                         for i in sorted({e[0] for e in errors})]
        rows = kept
        if recipe.data_format == "chat":  # conversational prompt-completion: the loss on the last answer only
            rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return Dataset.from_list(rows), digest


class EndOfSequenceCheck(TrainerCallback):
    """Before the first step, checks that the first :data:`CHECKED_ROWS` tokenized training rows end with the
    end-of-sequence token (or the chat template's end of turn): a model trained without it never stops."""

    def __init__(self, tokenizer):
        ends = {tokenizer.eos_token_id}
        for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            token = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token, int) and token != tokenizer.unk_token_id:
                ends.add(token)
        self.ends = ends - {None}
        self.tokenizer = tokenizer
        self.checked = 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if dataset is None or not hasattr(dataset, "column_names"):
            return
        columns = [c for c in ("input_ids", "chosen_ids", "rejected_ids", "completion_ids") if c in dataset.column_names]
        if not columns:
            return
        for i in range(min(CHECKED_ROWS, len(dataset))):
            row = dataset[i]
            for column in columns:
                ids = list(row[column]) or [None]  # unpadded here: the collator pads later
                while len(ids) > 1 and ids[-1] not in self.ends and not self.tokenizer.decode(ids[-1:]).strip():
                    ids.pop()  # a chat template's newline after the end-of-turn token
                if ids[-1] not in self.ends:
                    raise ValueError(f"training row {i}: {column} ends with token {ids[-1]}, not an end-of-sequence "
                                     f"token {sorted(self.ends)}: the row was cut at max_seq_len ({args.max_length}) "
                                     f"or the EOS was not appended; raise max_seq_len or shorten the row")
        self.checked = min(CHECKED_ROWS, len(dataset))


def trainable_model(recipe: Recipe, profile):
    """(model to train, tokenizer): the profile's model, peft-wrapped for lora/dora, a 4-bit base for qlora."""
    from peft import get_peft_model

    from labkit.comparison import Method, fresh_base
    from labkit.profiles import load_model

    torch.manual_seed(recipe.seed)  # the adapters' initial draw
    # Method builds the peft config (and the QLoRA base) as every chapter does; its rate is not used here
    method = Method(recipe.method, recipe.method, learning_rate=recipe.learning_rate or 1.0, r=recipe.r,
                    lora_alpha=recipe.lora_alpha)
    if recipe.method == "qlora":
        from transformers import AutoTokenizer

        from labkit.profiles import model_path

        model, tokenizer = fresh_base(method, profile, None), AutoTokenizer.from_pretrained(model_path(profile))
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        model, tokenizer = load_model(profile)
    if recipe.method == "full":
        return model.requires_grad_(True), tokenizer
    return get_peft_model(model, method.peft_config()), tokenizer


def trainer_config(recipe: Recipe, profile, tokenizer, labels=()):
    """The TRL config of the run: ``labkit.train.sft_config``, ``labkit.preferences.dpo_config`` or
    ``labkit.alignment.kto_config`` (λ_D from the rows' ``labels`` by ``desirable_weight_for``), checkpointing
    every ``save_steps`` into the run directory, counting tokens for TensorBoard."""
    from labkit.monitor import TOKEN_COUNTING

    common = dict(output_dir=recipe.output_dir, max_steps=recipe.steps, seed=recipe.seed, data_seed=recipe.seed,
                  save_strategy="steps", save_steps=recipe.save_steps, save_total_limit=recipe.save_total_limit,
                  logging_steps=max(1, recipe.steps // 10), **TOKEN_COUNTING)
    if recipe.learning_rate is not None:
        common["learning_rate"] = recipe.learning_rate
    if recipe.objective == "dpo":
        from labkit.preferences import dpo_config

        return dpo_config(profile, beta=recipe.beta, **common)
    if recipe.objective == "kto":
        from labkit.alignment import desirable_weight_for, kto_config

        return kto_config(profile, beta=recipe.beta, desirable_weight=desirable_weight_for(labels), **common)
    from labkit.train import sft_config

    return sft_config(profile, kind=recipe.method, eos_token=tokenizer.eos_token, **common)


def prepare_run_dir(recipe: Recipe, resume: bool | None) -> Path | None:
    """The checkpoint to resume from, after checking the run directory against ``recipe``.

    ``resume``: ``None`` resumes from :func:`latest_checkpoint` when there is one; ``True`` requires one;
    ``False`` removes earlier checkpoints and the trained model and starts over. Resuming with a recipe that
    differs from the saved one is refused, naming the keys.
    """
    run_dir = Path(recipe.output_dir)
    checkpoint = latest_checkpoint(run_dir)
    if resume is True and checkpoint is None:
        raise RecipeError(f"--resume: {run_dir} holds no complete checkpoint-<step> folder")
    if resume is False or checkpoint is None:
        for old in [*run_dir.glob("checkpoint-*"), run_dir / MODEL_DIR]:
            shutil.rmtree(old, ignore_errors=True)
        return None
    saved = run_recipe(run_dir).to_dict()
    changed = sorted(k for k, v in recipe.to_dict().items() if saved.get(k) != v and k != "memory_gib")
    if changed:
        raise RecipeError(f"{run_dir} was trained with another recipe (keys {', '.join(changed)} differ); "
                          "resume with the saved recipe.yaml, or pass --no-resume to start over")
    return checkpoint


def train(recipe: Recipe, *, resume: bool | None = None, force: bool = False) -> dict:
    """Train ``recipe`` (resolved from its profile) into its run directory; returns what ``train.json`` holds.

    The memory check runs before any weights load (``force`` turns a refusal into a warning). With
    checkpoints there, the run continues from the newest (see :func:`prepare_run_dir`): weights or adapter,
    optimizer, scheduler, RNG states and data position, so a killed run ends as an uninterrupted one.
    """
    from labkit.monitor import RunMonitor
    from labkit.train import labelled_positions_only, remove_training_wrappers, sft

    recipe, profile = recipe.resolved()
    try:
        memory = memory_check(recipe, profile)
    except MemoryRefusal:
        if not force:
            raise
        memory = {"forced": True}
    run_dir = Path(recipe.output_dir)
    checkpoint = prepare_run_dir(recipe, resume)
    save_recipe(recipe, run_dir)
    rejected: list = []
    rows, digest = training_rows(recipe, rejected)
    rejects = run_dir / REJECTS_FILE
    rejects.unlink(missing_ok=True)
    if recipe.on_bad_records == "skip":
        rejects.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
        print(f"on_bad_records: skip: {len(rejected)} of {len(rows) + len(rejected)} records of {recipe.data} left out "
              f"(see {rejects})")
    model, tokenizer = trainable_model(recipe, profile)
    config = trainer_config(recipe, profile, tokenizer, rows["label"] if recipe.objective == "kto" else ())
    eos = EndOfSequenceCheck(tokenizer)
    callbacks = [RunMonitor(run_dir / TENSORBOARD_DIR), eos]
    start = time.perf_counter()
    if recipe.objective == "sft":
        trainer = sft(model, tokenizer, rows, config, callbacks=callbacks, resume_from_checkpoint=checkpoint and str(checkpoint))
    else:  # DPO, or KTO as labkit.alignment.train_kto runs it (resumable here); LoRA: TRL freezes the adapter's start
        from trl import DPOTrainer, KTOTrainer

        reference = copy.deepcopy(model).requires_grad_(False) if recipe.method == "full" else None
        trainer_class = DPOTrainer if recipe.objective == "dpo" else KTOTrainer
        trainer = trainer_class(model=model, ref_model=reference, args=config, train_dataset=rows,
                                processing_class=tokenizer, callbacks=callbacks)
        with labelled_positions_only():
            trainer.train(resume_from_checkpoint=checkpoint and str(checkpoint))
        remove_training_wrappers(trainer.model)
    trainer.save_model(str(run_dir / MODEL_DIR))
    tokenizer.save_pretrained(str(run_dir / MODEL_DIR))
    history = trainer.state.log_history
    result = {"steps": trainer.state.global_step, "resumed_from": checkpoint and checkpoint.name,
              "losses": {h["step"]: h["loss"] for h in history if "loss" in h},
              "train_seconds_this_process": time.perf_counter() - start, "data_sha256": digest, "rows": len(rows),
              "rejected_records": len(rejected),
              "eos_checked_rows": eos.checked, "memory": memory,
              "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    (run_dir / TRAIN_RESULT).write_text(json.dumps(result, indent=1))
    return result


def final_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained tensors a run saved in ``model/`` (the adapter's, or every weight), by name."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / MODEL_DIR
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors files; has the run finished?")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def max_weight_difference(run_a: str | Path, run_b: str | Path) -> float:
    """Largest absolute difference between the saved weights of two runs (same names required)."""
    a, b = final_weights(run_a), final_weights(run_b)
    if a.keys() != b.keys():
        raise ValueError(f"the runs saved different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def kill_after_checkpoint(command: list[str], run_dir: str | Path, step: int, *, timeout: float = 600.0) -> dict:
    """Start ``command`` (a ``labkit train`` process) and send it SIGKILL as soon as ``checkpoint-<step>`` is
    complete in ``run_dir``, as an out-of-memory killer or a preempted machine would: no cleanup, no final save.

    Returns the newest complete checkpoint left behind and the process's exit code (``-SIGKILL``).
    """
    import signal
    import subprocess
    import tempfile

    target = Path(run_dir) / f"checkpoint-{step}" / "trainer_state.json"
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a full pipe would stall the run
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        start = time.monotonic()
        while not target.is_file():
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the run ended (exit {process.returncode}) before {target.parent.name}: "
                                   f"{log.read()[-2000:]}")
            if time.monotonic() - start > timeout:
                process.kill()
                raise TimeoutError(f"no {target.parent.name} after {timeout:.0f} s")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    newest = latest_checkpoint(run_dir)
    return {"returncode": process.returncode, "checkpoint": newest.name if newest else None}
