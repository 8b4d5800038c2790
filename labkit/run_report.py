"""A finished run evaluated and exported: exact match with intervals, perplexity and forgetting, the merged model.

``evaluate_run`` writes ``eval.json`` and ``eval.md`` into the run directory; ``merge_run`` folds the adapter
into a full-precision base (for QLoRA the 4-bit base dequantized) and saves safetensors, the tokenizer with
its chat template and a model card, reporting the measured logit difference to the unmerged model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from labkit.recipe import RECIPE_FILE, Recipe, run_recipe
from labkit.runs import MODEL_DIR, TRAIN_RESULT

EVAL_JSON, EVAL_MD, MERGE_JSON, MODEL_CARD = "eval.json", "eval.md", "merge.json", "README.md"
PROBE_PROMPTS = 8
"""Held-out prompts whose logits compare the merged model with the unmerged one."""


def _is_adapter(run_dir: Path) -> bool:
    return (run_dir / MODEL_DIR / "adapter_config.json").is_file()


def load_trained(run_dir: str | Path):
    """(trained model, tokenizer, resolved recipe, profile) of a run: the base (4-bit for qlora) with the
    saved adapter, or the saved full model, on the profile's device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    recipe, profile = run_recipe(run_dir).resolved()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / MODEL_DIR)
    if not _is_adapter(run_dir):
        model = AutoModelForCausalLM.from_pretrained(run_dir / MODEL_DIR, dtype=torch.float32).to(profile.device)
        return model.eval(), tokenizer, recipe, profile
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model(recipe, profile, quantized=recipe.method == "qlora"), run_dir / MODEL_DIR)
    return model.eval(), tokenizer, recipe, profile


def base_model(recipe: Recipe, profile, *, quantized: bool = False, dequantized: bool = False):
    """The run's base model in fp32: as loaded (``labkit.profiles.load_model``), in 4 bits (``labkit.quant.load_4bit``),
    or loaded in 4 bits and dequantized back to fp32 (the weights a QLoRA adapter was trained against)."""
    from labkit.profiles import load_model, model_path

    if not (quantized or dequantized):
        return load_model(profile)[0]
    from labkit.quant import load_4bit

    model = load_4bit(model_path(profile), compute_dtype=profile.torch_dtype)
    if dequantized:
        model = model.dequantize(dtype=torch.float32)
    return model.eval()


def eval_rows(recipe: Recipe):
    """The held-out rows a run is scored on: ``recipe.eval_data``, or its tasks' ``eval_split``."""
    from datasets import Dataset

    from labkit import tasks

    if recipe.eval_data is not None:
        lines = Path(recipe.eval_data).read_text(encoding="utf-8").splitlines()
        return Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    if not recipe.tasks:
        raise ValueError(f"{recipe.output_dir}: the recipe has no eval_data and no tasks: data; add eval_data "
                         "(rows with prompt or messages, task and answer)")
    return tasks.verifiable_tasks(recipe.eval_examples, seed=recipe.seed, split=recipe.eval_split, fmt="completion",
                                  tasks=recipe.tasks)


def _score(model, tokenizer, rows, profile) -> dict:
    from labkit.eval import accuracy_table, heldout_loss, heldout_texts, score_examples

    scores = score_examples(model, tokenizer, rows, progress=False, max_new_tokens=profile.max_new_tokens)
    overall = accuracy_table(scores).loc["all"]
    loss = heldout_loss(model, tokenizer, max_seq_len=profile.max_seq_len, texts=heldout_texts(profile.heldout_chars))
    return {"exact_match": float(overall.accuracy), "ci_low": float(overall.ci_low), "ci_high": float(overall.ci_high),
            "n": int(overall.n), "heldout_loss": loss, "heldout_perplexity": math.exp(loss),
            "correct": scores["correct"].tolist()}


def evaluate_run(run_dir: str | Path) -> dict:
    """Score the trained model and its base on the same held-out prompts: exact match with Wilson 95% intervals,
    the paired comparison (paired bootstrap, McNemar), held-out perplexity and forgetting; writes
    :data:`EVAL_JSON` and :data:`EVAL_MD` into ``run_dir`` and returns the report."""
    from labkit.eval import forgetting, paired_comparison

    run_dir = Path(run_dir)
    model, tokenizer, recipe, profile = load_trained(run_dir)
    rows = eval_rows(recipe)
    tuned = _score(model, tokenizer, rows, profile)
    base = _score(base_model(recipe, profile), tokenizer, rows, profile)
    paired = paired_comparison({"trained": tuned.pop("correct"), "base": base.pop("correct")}, reference="base")
    row = paired.iloc[0]
    report = {"split": recipe.eval_split if recipe.eval_data is None else recipe.eval_data, "trained": tuned, "base": base,
              "forgetting": forgetting(tuned["heldout_loss"], base["heldout_loss"]),
              "paired": {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}}
    (run_dir / EVAL_JSON).write_text(json.dumps(report, indent=1, default=str))
    (run_dir / EVAL_MD).write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """:func:`evaluate_run`'s report as a Markdown table and a line for the paired comparison."""
    lines = [f"Held-out split: {report['split']}", "",
             "| model | exact match | 95% CI | n | held-out perplexity |", "|---|---|---|---|---|"]
    for name in ("base", "trained"):
        r = report[name]
        lines.append(f"| {name} | {r['exact_match']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} | "
                     f"{r['heldout_perplexity']:.3f} |")
    p = report["paired"]
    details = ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in p.items())
    lines += ["", f"Forgetting (held-out loss, trained minus base): {report['forgetting']:.4f}",
              "", f"Paired comparison with the base on the same prompts: {details}", ""]
    return "\n".join(lines)


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    return logits[batch["attention_mask"].bool()]  # (tokens, vocab): padding positions left out


def merge_run(run_dir: str | Path, out: str | Path, *, dtype: str = "float32") -> dict:
    """Merge the run's adapter into a full-precision base, save it to ``out`` and measure it.

    LoRA/DoRA: into the fp32 base. QLoRA: into the 4-bit base dequantized to fp32 (the weights the adapter
    was trained against); the difference of merging into the original fp32 weights instead is reported too.
    The saved model is reloaded from ``out`` and its logits on :data:`PROBE_PROMPTS` held-out prompts compared
    with the unmerged model's (the model as trained): ``max_abs_logit_difference``. Writes safetensors, the
    tokenizer with its chat template, :data:`MODEL_CARD` (recipe, data hash, metrics) and :data:`MERGE_JSON`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, out = Path(run_dir), Path(out)
    if not _is_adapter(run_dir):
        raise ValueError(f"{run_dir} trained all weights (method full): {run_dir / MODEL_DIR} is already a full "
                         "model; there is no adapter to merge")
    unmerged, tokenizer, recipe, profile = load_trained(run_dir)
    prompts = eval_rows(recipe)[:PROBE_PROMPTS]["prompt"]
    tokenizer.padding_side = "left"
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True))
    reference = _logits(unmerged, batch)
    del unmerged
    result = {"method": recipe.method, "dtype": dtype, "probe_tokens": int(batch["attention_mask"].sum())}
    if recipe.method == "qlora":
        naive = PeftModel.from_pretrained(base_model(recipe, profile), run_dir / MODEL_DIR).merge_and_unload()
        result["max_abs_logit_difference_original_base"] = (_logits(naive, batch) - reference).abs().max().item()
        del naive
    base = base_model(recipe, profile, dequantized=recipe.method == "qlora")
    merged = PeftModel.from_pretrained(base, run_dir / MODEL_DIR).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(profile.device).eval()
    result["max_abs_logit_difference"] = (_logits(reloaded, batch) - reference).abs().max().item()
    result["saved_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    (out / MERGE_JSON).write_text(json.dumps(result, indent=1))
    (out / MODEL_CARD).write_text(model_card(run_dir, result))
    return result


def model_card(run_dir: str | Path, merge: dict) -> str:
    """A model card: what was merged, the recipe, the training data's hash, the training and evaluation metrics."""
    run_dir = Path(run_dir)
    trained = json.loads((run_dir / TRAIN_RESULT).read_text())
    lines = ["# Merged model", "", f"Trained by `labkit train` ({merge['method']}); adapter merged into a "
             f"{'dequantized 4-bit' if merge['method'] == 'qlora' else 'full-precision'} base, saved in {merge['dtype']}.",
             f"Largest |logit difference| to the unmerged model on {merge['probe_tokens']} probe tokens: "
             f"{merge['max_abs_logit_difference']:.3g}.", "",
             "## Training data", "", f"{trained['rows']} rows, SHA-256 `{trained['data_sha256']}`; "
             f"{trained['steps']} steps; last logged loss {list(trained['losses'].values())[-1]:.4f}.", ""]
    if (run_dir / EVAL_MD).is_file():
        lines += ["## Evaluation", "", (run_dir / EVAL_MD).read_text(), ""]
    lines += ["## Recipe", "", "```yaml", (run_dir / RECIPE_FILE).read_text().rstrip(), "```", ""]
    return "\n".join(lines)
