"""The ``labkit`` command: ``train``, ``eval`` and ``merge`` a recipe's run; ``fit`` (will a run fit) and ``data validate``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
"""Exit codes: success; bad records or a run that fits nowhere; a command line or file that cannot be used."""


class UsageError(Exception):
    """A file or argument the command cannot use; printed as ``labkit: error: ...`` with exit code 2."""


def read_records(path: Path) -> list:
    """Records of a ``.jsonl`` file (one JSON value per line) or a ``.json`` file (one array of them).

    A line that is not JSON raises :class:`UsageError` naming the file and line; blank lines are skipped.
    """
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}: not JSON ({error})") from None
        if not isinstance(records, list):
            raise UsageError(f"{path}: holds a {type(records).__name__}; expected a JSON array of records")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}, line {number}: not JSON ({error.msg}); expected one record per line") from None
    return records


def write_jsonl(path: Path, rows: Sequence) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def validate_command(args: argparse.Namespace) -> int:
    """Every problem of every record, one line each on stderr; with ``--on-bad-records skip``, the good records
    to ``--out`` and each bad one with its problems to ``--rejects``."""
    from labkit.data.validation import find_errors, format_error

    records = read_records(args.file)
    options = {}
    if args.max_tokens is not None:
        from labkit.base import load_base

        options = dict(tokenizer=load_base()[1], max_tokens=args.max_tokens)
    errors = find_errors(records, args.format, allow_extra=args.allow_extra or False, **options)
    bad = sorted({index for index, _, _ in errors})
    for error in errors:
        print(format_error(error), file=sys.stderr)
    summary = f"{args.file}: {len(records)} records, {len(records) - len(bad)} valid, {len(bad)} invalid ({len(errors)} problems)"
    if args.on_bad_records == "error":
        print(summary)
        return EXIT_PROBLEM if errors else EXIT_OK
    problems: dict[int, list[str]] = {}
    for index, path, message in errors:
        problems.setdefault(index, []).append(f"{path} {message}".strip())
    write_jsonl(args.out, [r for i, r in enumerate(records) if i not in problems])
    write_jsonl(args.rejects, [{"index": i, "problems": problems[i], "record": records[i]} for i in bad])
    print(f"{summary}; {len(records) - len(bad)} written to {args.out}, {len(bad)} to {args.rejects}")
    return EXIT_OK


def fit_command(args: argparse.Namespace) -> int:
    """The estimate's terms for one device, then (with ``--gpu-gib``) the fewest GPUs of that size that hold it."""
    from labkit.memory import estimate_memory, smallest_fit

    setup = dict(batch_size=args.batch_size, seq_len=args.seq_len, precision=args.precision, optimizer=args.optimizer,
                 gradient_checkpointing=args.gradient_checkpointing)
    if args.reference is not None:  # preference training (DPO, KTO, IPO): pairs, and a reference model or not
        setup |= dict(objective="preference", reference=args.reference)
    if args.method != "full":
        setup["r"] = args.r
    model = args.model if args.model in _architectures() else Path(args.model)
    if isinstance(model, Path) and not model.exists():
        raise UsageError(f"{args.model}: neither a registry name ({', '.join(_architectures())}) nor a config.json path")
    report = estimate_memory(model, method=args.method, device="cuda", **setup)
    print(report)
    if args.gpu_gib is None:
        return EXIT_OK
    plan = smallest_fit(model, method=args.method, gpu_gib=args.gpu_gib, **setup)
    if plan["gpus"] is None:
        print(f"fits on no count of {args.gpu_gib:g} GiB GPUs tried: {plan['strategy']}")
        return EXIT_PROBLEM
    where = (f"one {args.gpu_gib:g} GiB GPU" if plan["gpus"] == 1
             else f"{plan['gpus']} x {args.gpu_gib:g} GiB GPUs with {plan['strategy']}")
    print(f"fits on {where}: {plan['GiB per GPU']:.2f} GiB per GPU with CUDA overhead")
    return EXIT_OK


def train_command(args: argparse.Namespace) -> int:
    """Load and validate the recipe, check memory, train (resuming from the newest checkpoint), print a summary."""
    from labkit.data.validation import DataFormatError
    from labkit.recipe import load_recipe
    from labkit.runs import MemoryRefusal, train

    recipe = load_recipe(args.recipe, args.set or [])
    try:
        result = train(recipe, resume=args.resume, force=args.force)
    except MemoryRefusal as refusal:
        print(f"labkit: refused: {refusal}", file=sys.stderr)
        return EXIT_PROBLEM
    except DataFormatError as error:
        print(f"labkit: {recipe.data}: {error}", file=sys.stderr)
        return EXIT_PROBLEM
    resumed = f", resumed from {result['resumed_from']}" if result["resumed_from"] else ""
    losses = list(result["losses"].values())
    print(f"trained {result['steps']} steps{resumed}; last logged loss {losses[-1]:.4f}; "
          f"model in {Path(recipe.output_dir) / 'model'}")
    return EXIT_OK


def eval_command(args: argparse.Namespace) -> int:
    """Score a finished run and its base; print the Markdown report (also written as eval.json, eval.md)."""
    from labkit.run_report import evaluate_run, report_markdown

    print(report_markdown(evaluate_run(args.run_dir)))
    return EXIT_OK


def merge_command(args: argparse.Namespace) -> int:
    """Merge the run's adapter into a full-precision base and save it; print the measured differences."""
    from labkit.run_report import merge_run

    result = merge_run(args.run_dir, args.out, dtype=args.dtype)
    print(json.dumps(result, indent=1))
    return EXIT_OK


def _architectures() -> tuple[str, ...]:
    from labkit.memory import ARCHITECTURES

    return ARCHITECTURES


def parser() -> argparse.ArgumentParser:
    from labkit.data.formats import FORMATS
    from labkit.memory.setup import CHECKPOINTING, REFERENCES
    from labkit.vocabulary import MEMORY_METHODS, OPTIMIZERS, PRECISIONS

    top = argparse.ArgumentParser(prog="labkit", description="The Fine-Tuning Lab's toolkit on the command line.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from labkit.recipe import field_names

    train = commands.add_parser(
        "train", help="train a recipe (SFT, DPO or KTO; full, LoRA, QLoRA, DoRA) into its run directory",
        description="Train the recipe in RECIPE (YAML; keys: " + ", ".join(field_names()) + "). The memory "
                    "estimate is checked before any weights load (exit 1 with the numbers if it does not fit, unless "
                    "--force). Checkpoints every save_steps; TensorBoard logs in OUTPUT_DIR/tensorboard. By default a "
                    "run directory with a checkpoint is resumed from its newest one. Exit 1: bad data records or a "
                    "refused run; exit 2: a bad recipe key or value.")
    train.add_argument("recipe", type=Path, help="a recipe .yaml file (see recipes/)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe key, typed by the key (repeatable), e.g. --set steps=20")
    resume = train.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", default=None,
                        help="continue from the newest complete checkpoint (an error if there is none)")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="remove earlier checkpoints and the trained model, and start over")
    train.add_argument("--force", action="store_true", help="train even when the memory estimate does not fit")
    train.set_defaults(run=train_command)

    evaluate = commands.add_parser(
        "eval", help="score a run and its base: exact match with 95%% intervals, perplexity, forgetting",
        description="Score the trained model and its base model on the same held-out prompts (the recipe's "
                    "eval_data, or its tasks' eval_split): exact match with Wilson 95% intervals, a paired "
                    "comparison (paired bootstrap, McNemar), held-out perplexity and forgetting. Writes "
                    "RUN_DIR/eval.json and RUN_DIR/eval.md.")
    evaluate.add_argument("run_dir", type=Path, help="a run directory written by 'labkit train'")
    evaluate.set_defaults(run=eval_command)

    merge = commands.add_parser(
        "merge", help="merge a run's adapter into a full-precision base and save it with tokenizer and model card",
        description="Merge the adapter of RUN_DIR into its base in full precision (QLoRA: the 4-bit base "
                    "dequantized) and save safetensors, the tokenizer with its chat template, a model card (recipe, "
                    "data hash, metrics) and merge.json: the largest logit difference between the saved merged "
                    "model and the unmerged one on held-out prompts.")
    merge.add_argument("run_dir", type=Path, help="a run directory written by 'labkit train'")
    merge.add_argument("--out", type=Path, required=True, help="the folder to write the merged model to")
    merge.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="dtype of the saved weights (default float32)")
    merge.set_defaults(run=merge_command)

    fit = commands.add_parser("fit", help="estimate a run's training memory and the GPUs that hold it",
                              description="labkit.memory's estimate of one training step, term by term, per device "
                                          "(CUDA overhead shown apart); with --gpu-gib, the fewest GPUs of that "
                                          "size and the first sharding strategy that fit. Exit code 1: nothing fits.")
    fit.add_argument("model", help="a registry name (see labkit.memory.ARCHITECTURES) or a config.json path")
    fit.add_argument("--method", required=True, choices=MEMORY_METHODS)
    fit.add_argument("--seq-len", type=_positive, default=2048, help="tokens per sequence (default 2048)")
    fit.add_argument("--batch-size", type=_positive, default=1, help="sequences per device and step (default 1)")
    fit.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed", help="default bf16-mixed")
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw_torch", help="default adamw_torch")
    fit.add_argument("--gradient-checkpointing", choices=CHECKPOINTING, default="full", help="default full")
    fit.add_argument("--r", type=_positive, default=16, help="LoRA rank, all linear layers (default 16)")
    fit.add_argument("--reference", choices=REFERENCES,
                     help="preference training (DPO): --batch-size pairs of chosen and rejected sequences, with the "
                          "reference model held in memory (model; none for adapters, whose disabled base is the "
                          "reference), computed before training (precomputed) or absent (none: SimPO, ORPO)")
    fit.add_argument("--gpu-gib", type=float, help="memory of one GPU in GiB, e.g. 24 or 80")
    fit.set_defaults(run=fit_command)

    data = commands.add_parser("data", help="check and clean training data").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND")
    validate = data.add_parser("validate", help="report every bad record of a file: index, field and reason",
                               description="Validate a .jsonl (or .json array) file against a labkit.data format. "
                                           "Every problem is printed on stderr as 'record I: FIELD reason'. "
                                           "Exit code 1 if any record is bad, unless --on-bad-records skip writes "
                                           "the good records and the rejects (nothing is dropped silently).")
    validate.add_argument("file", type=Path)
    validate.add_argument("--format", required=True, choices=FORMATS)
    validate.add_argument("--allow-extra", nargs="*", metavar="FIELD",
                          help="fields beyond the format's own to accept (none given: accept any)")
    validate.add_argument("--max-tokens", type=_positive,
                          help="also reject records longer than this many tokens of labkit's shipped tokenizer")
    validate.add_argument("--on-bad-records", choices=("error", "skip"), default="error",
                          help="error (default): exit 1 on any bad record; skip: write good and rejected records apart")
    validate.add_argument("--out", type=Path, help="with skip: where the good records go (.jsonl)")
    validate.add_argument("--rejects", type=Path, help="with skip: where bad records and their problems go (.jsonl)")
    validate.set_defaults(run=validate_command)
    return top


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if getattr(args, "on_bad_records", None) == "skip" and (args.out is None or args.rejects is None):
        top.error("--on-bad-records skip needs --out and --rejects: nothing is dropped without a record of it")
    if getattr(args, "allow_extra", None) == []:
        args.allow_extra = True
    try:
        return args.run(args)
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"labkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
