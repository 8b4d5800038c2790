"""Rebuild the shipped base model from scratch: ``python -m labkit.build_base``.

Stages: corpus (stdlib text; held-out split and task word lists shipped as assets) -> tokenizer (BPE, 4096) -> pretraining -> bf16 safetensors in
``labkit/assets/base`` -> ``build.json`` (checksum, held-out perplexity, timing, versions).
``--record-only`` recomputes ``build.json`` for the weights already there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from labkit.base import load_base
from labkit.paths import BASE_DIR
from labkit.eval.heldout import heldout_perplexity
from labkit.corpus import split_documents, stdlib_documents, write_heldout
from labkit.tasks import write_task_assets
from labkit.pretrain import PretrainConfig, build_model, pretrain, token_stream
from labkit.tokenizer import EOS, IM_END, train_tokenizer

RECIPE = PretrainConfig(steps=4500, warmup_steps=200, eval_every=250, bf16_autocast=True)  # as the shipped weights were built
"""The shipped model's recipe: 4.46M parameters, ~18M tokens (about 5 passes over the corpus)."""

SAMPLING_DEFAULTS = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.3)
"""Greedy decoding of a model this small falls into loops; these defaults keep samples readable."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(out: Path, cfg: PretrainConfig) -> None:
    t0 = time.perf_counter()
    docs = stdlib_documents()
    train_docs, heldout_docs = split_documents(docs)
    write_heldout(heldout_docs)
    write_task_assets(train_docs)  # the module task asks only what pretraining could teach
    tokenizer = train_tokenizer((d.text for d in train_docs), vocab_size=4096)
    train_ids = token_stream([d.text for d in train_docs], tokenizer)
    eval_ids = token_stream([d.text for d in heldout_docs], tokenizer)
    print(f"corpus: {len(train_docs)} train docs, {len(train_ids):,} tokens; {len(heldout_docs)} held-out docs, "
          f"{len(eval_ids):,} tokens ({time.perf_counter() - t0:.0f}s)", flush=True)
    model = build_model(cfg, tokenizer)
    log = pretrain(model, train_ids, cfg, eval_ids=eval_ids)
    out.mkdir(parents=True, exist_ok=True)
    # Advertise the context the model was trained on, not the one RoPE could be asked for:
    # longer inputs degrade (the long-context chapter extends it deliberately).
    model.config.max_position_embeddings = tokenizer.model_max_length = cfg.seq_len
    model.generation_config.update(**SAMPLING_DEFAULTS)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in (EOS, IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(out)  # bf16 halves the shipped bytes
    tokenizer.save_pretrained(out)
    (out / "pretrain_log.json").write_text(json.dumps({
        "recipe": dataclasses.asdict(cfg),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(eval_ids),
        "seconds": round(log.seconds, 1),
        "tokens_seen": log.tokens,
        "steps": log.steps[::10],
        "train_loss": [round(x, 4) for x in log.train_loss[::10]],
        "eval_steps": log.eval_steps,
        "eval_loss": [round(x, 4) for x in log.eval_loss],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }, indent=1))


def record(out: Path) -> dict:
    """Measure the shipped weights as ``load_base`` returns them and write ``build.json``."""
    model, tokenizer = load_base(out)
    rec = {
        "sha256": {p.name: sha256(p) for p in sorted(out.iterdir()) if p.name not in {"build.json", "pretrain_log.json"}},
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_perplexity": heldout_perplexity(model, tokenizer),
    }
    (out / "build.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BASE_DIR)
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--record-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.record_only:
        train(args.out, dataclasses.replace(RECIPE, steps=args.steps, warmup_steps=min(RECIPE.warmup_steps, args.steps)))
    print(json.dumps(record(args.out), indent=1))


if __name__ == "__main__":
    sys.exit(main())
