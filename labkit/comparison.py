"""One harness for every fine-tuning method: same data, seed and step budget; one row of measurements each.

Each run trains with TRL's ``SFTTrainer`` and reports trainable parameters, the peak tensor memory of
one real training step (measured) next to ``labkit.memory.estimate``'s figure for the same batch,
wall time, task score with a Wilson interval and forgetting (change in held-out loss).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.memory.peak import PeakMemory
from labkit.profiles import Profile

KINDS = ("full", "lora", "qlora", "dora", "rslora", "pissa", "loraplus", "prompt", "prefix", "ia3")
"""Methods the harness knows; every LoRA variant adapts the same ``target_modules``."""

LORA_KINDS = ("lora", "qlora", "dora", "rslora", "pissa", "loraplus")
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_8bit": "adamw-8bit", "paged_adamw_8bit": "paged-adamw-8bit",
              "paged_adamw_32bit": "paged-adamw"}
"""TRL/transformers ``optim`` names the harness accepts, and ``labkit.memory``'s name for each."""

VIRTUAL_TOKEN_ROOM = 32
"""Held-out windows are this many tokens shorter than the context, so that prompt and prefix tuning's
learned tokens fit in the positions the model was trained on; every method is scored on the same windows."""

COLUMNS = ("kind", "trainable params", "trainable share", "peak MiB", "estimated MiB", "train s",
           "accuracy", "ci_low", "ci_high", "heldout loss", "forgetting", "final train loss")
"""The columns of a comparison table (one row per method, plus the base model)."""


HUB_LEARNING_RATES = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "dora": 2e-4, "rslora": 2e-4, "pissa": 2e-4,
                      "loraplus": 2e-5, "prompt": 3e-2, "prefix": 1e-2, "ia3": 3e-3}
"""Starting points for hub models (GPU profile): common practice, not tuned here; sweep before concluding."""


@dataclass
class Method:
    """One fine-tuning recipe: a kind from :data:`KINDS` and its knobs."""

    name: str
    """Row label in the table."""
    kind: str
    learning_rate: float
    """Peak learning rate (cosine schedule with warm-up); tune it per method."""
    r: int = 8
    """Rank of the LoRA variants."""
    lora_alpha: float | None = None
    """LoRA scale numerator; default ``2 * r``."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Linear layers the LoRA variants adapt."""
    num_virtual_tokens: int = 16
    """Learned tokens of prompt and prefix tuning."""
    loraplus_lr_ratio: float = 16.0
    """LoRA+ (Hayou et al. 2024): B's learning rate divided by A's."""
    optim: str = "adamw_torch"
    """Optimizer, by transformers' name: one of :data:`OPTIMIZERS`."""
    extra: dict = field(default_factory=dict)
    """Further keyword arguments for the peft config (e.g. ``prompt_tuning_init``)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        if not self.learning_rate > 0:
            raise ValueError(f"method {self.name!r}: learning_rate must be > 0, got {self.learning_rate}")
        if self.r < 1 or self.num_virtual_tokens < 1:
            raise ValueError(f"method {self.name!r}: r and num_virtual_tokens must be >= 1, got {self.r}, {self.num_virtual_tokens}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"method {self.name!r}: optim {self.optim!r} is not supported; expected one of {', '.join(OPTIMIZERS)}")
        if self.kind in ("prompt", "prefix") and self.num_virtual_tokens > VIRTUAL_TOKEN_ROOM:
            raise ValueError(f"method {self.name!r}: num_virtual_tokens must be <= {VIRTUAL_TOKEN_ROOM} "
                             f"(the room held-out windows leave), got {self.num_virtual_tokens}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.r

    def peft_config(self):
        """The peft config of this method (``None`` for full fine-tuning)."""
        from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

        if self.kind == "full":
            return None
        if self.kind in LORA_KINDS:
            target = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
            return LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.lora_alpha, lora_dropout=0.0,
                              target_modules=target, use_dora=self.kind == "dora", use_rslora=self.kind == "rslora",
                              init_lora_weights="pissa" if self.kind == "pissa" else True, **self.extra)
        if self.kind == "prompt":
            return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, **self.extra)
        if self.kind == "prefix":
            return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, **self.extra)
        return IA3Config(task_type="CAUSAL_LM", **self.extra)


def default_methods(profile: Profile, *, r: int = 8, num_virtual_tokens: int = 16, kinds=KINDS) -> list[Method]:
    """Each of ``kinds`` (default: all of :data:`KINDS`) once, at rank ``r`` (alpha 2r) and its :func:`learning_rate`."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}; expected some of {', '.join(KINDS)}")
    names = {"full": "full fine-tuning", "lora": f"LoRA r={r}", "qlora": f"QLoRA r={r}", "dora": f"DoRA r={r}",
             "rslora": f"rsLoRA r={r}", "pissa": f"PiSSA r={r}", "loraplus": f"LoRA+ r={r}",
             "prompt": "prompt tuning", "prefix": "prefix tuning", "ia3": "IA3"}
    return [Method(names[kind], kind, learning_rate(kind, profile), r=r, num_virtual_tokens=num_virtual_tokens) for kind in kinds]


def learning_rate(kind: str, profile: Profile) -> float:
    """The peak learning rate the book uses for ``kind`` on ``profile``'s model.

    For the embedded model: the best rate of the recorded sweep (``labkit.tuning``); for hub models:
    :data:`HUB_LEARNING_RATES`.
    """
    from labkit.tuning import best_rates, tuning_record

    table = best_rates(tuning_record()) if profile.embedded else HUB_LEARNING_RATES
    if kind not in table:
        raise ValueError(f"kind {kind!r} is unknown; expected one of {', '.join(table)}")
    return table[kind]


@dataclass
class Run:
    """What one method's run produced: its table row and the trained model (for saving, merging, sampling)."""

    row: dict
    model: PreTrainedModel
    trainer: object
    memory: PeakMemory
    """The measured step: ``peak_bytes``, ``peak_breakdown`` and the ``batch_shape`` it trained on."""


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters that receive gradients (for 4-bit weights, bitsandbytes' packed storage is never trainable)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fresh_base(method: Method, profile: Profile, base_model: PreTrainedModel) -> PreTrainedModel:
    """A copy of the base model as ``method`` trains it: for QLoRA a new 4-bit load, prepared by peft
    (its unquantized weights — embeddings, norms — cast to fp32, as QLoRA trains them)."""
    if method.kind == "qlora":
        from peft import prepare_model_for_kbit_training

        from labkit.base import BASE_DIR
        from labkit.quant import load_4bit

        model = load_4bit(profile.model_id or BASE_DIR, compute_dtype=profile.torch_dtype)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return copy.deepcopy(base_model)


def prepare_model(method: Method, profile: Profile, base_model: PreTrainedModel):
    """The model to train (peft-wrapped unless full fine-tuning) and its optimizer, or ``None`` for the trainer's own."""
    from peft import get_peft_model

    model = fresh_base(method, profile, base_model)
    config = method.peft_config()
    if config is None:
        model.requires_grad_(True)
        return model, None
    model = get_peft_model(model, config)
    if method.kind != "loraplus":
        return model, None
    from peft.optimizers import create_loraplus_optimizer

    return model, create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=method.learning_rate,
                                            loraplus_lr_ratio=method.loraplus_lr_ratio, weight_decay=0.0)


def estimated_bytes(method: Method, profile: Profile, config, batch_shape: tuple[int, int], checkpointing: bool) -> float:
    """``labkit.memory.estimate``'s total for this method and batch; NaN where it has no model of the method."""
    from labkit.memory import estimate
    from labkit.memory.setup import LINEAR_MODULES

    kind = {"full": "full", "qlora": "qlora", "dora": "dora"}.get(method.kind, "lora" if method.kind in LORA_KINDS else None)
    if kind is None:  # prompt, prefix, IA3: not in labkit.memory's model
        return float("nan")
    targets = LINEAR_MODULES if method.target_modules == "all-linear" else tuple(method.target_modules)
    report = estimate(config, method=kind, device=profile.device, batch_size=batch_shape[0], seq_len=batch_shape[1],
                      precision="fp32" if profile.dtype == "float32" else "bf16", r=method.r,
                      target_modules=targets, optimizer=OPTIMIZERS[method.optim],
                      gradient_checkpointing="full" if checkpointing else "none")
    return float(report.total_bytes)


FORGETTING_CHARS_PER_DOCUMENT = 4000
"""Forgetting is measured on the first this-many characters of every held-out document (about a
quarter of the held-out tokens, every document represented), to keep a run's evaluation short."""


def forgetting_texts() -> list[str]:
    """The held-out text the method chapters measure forgetting on (see :data:`FORGETTING_CHARS_PER_DOCUMENT`)."""
    from labkit.corpus import heldout_documents

    return [d.text[:FORGETTING_CHARS_PER_DOCUMENT] for d in heldout_documents()]


def heldout_window(profile: Profile, model: PreTrainedModel) -> int:
    """Tokens per held-out window: the trained context less :data:`VIRTUAL_TOKEN_ROOM`."""
    return min(profile.max_seq_len, model.config.max_position_embeddings) - VIRTUAL_TOKEN_ROOM


def heldout_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout: list[str], context: int) -> float:
    """Mean negative log-likelihood (nats/token) of the held-out texts, in windows of ``context`` tokens."""
    from labkit.eval import negative_log_likelihood

    total, count = negative_log_likelihood(model, tokenizer, heldout, max_length=context)
    return total / count


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, test, heldout: list[str], context: int) -> dict:
    """Task score (exact match, Wilson 95% interval) on ``test`` and held-out loss (nats/token)."""
    from labkit.eval import accuracy_table, score_examples

    overall = accuracy_table(score_examples(model, tokenizer, test, progress=False)).loc["all"]
    return {"accuracy": overall.accuracy, "ci_low": overall.ci_low, "ci_high": overall.ci_high,
            "heldout loss": heldout_loss(model, tokenizer, heldout, context)}


def run_method(
    method: Method,
    *,
    profile: Profile,
    base_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train,
    test,
    heldout: list[str],
    steps: int,
    seed: int = 0,
    base_loss: float | None = None,
    **config_overrides,
) -> Run:
    """Train a copy of ``base_model`` with ``method`` for ``steps`` steps; measure and score it.

    ``base_loss``: the base model's held-out loss, for the ``forgetting`` column (computed if omitted).
    ``config_overrides`` go to ``labkit.train.sft_config`` (e.g. ``logging_steps``).
    """
    from labkit.train import sft, sft_config

    torch.manual_seed(seed)
    context = heldout_window(profile, base_model)
    if base_loss is None:
        base_loss = heldout_loss(base_model, tokenizer, heldout, context)
    model, optimizer = prepare_model(method, profile, base_model)
    peak = PeakMemory(step=min(1, steps - 1))
    config = sft_config(profile, max_steps=steps, learning_rate=method.learning_rate, seed=seed, optim=method.optim,
                        **config_overrides)
    start = time.perf_counter()
    trainer = sft(model, tokenizer, train, config, callbacks=[peak], optimizers=(optimizer, None))
    seconds = time.perf_counter() - start
    trained = trainer.model
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainable = trainable_parameters(trained)
    row = {"kind": method.kind, "trainable params": trainable,
           "trainable share": trainable / sum(p.numel() for p in base_model.parameters()),
           "peak MiB": peak.peak_bytes / 2**20,
           "estimated MiB": estimated_bytes(method, profile, base_model.config, peak.batch_shape,
                                            config.gradient_checkpointing) / 2**20,
           "train s": seconds, **evaluate(trained, tokenizer, test, heldout, context),
           "final train loss": losses[-1] if losses else float("nan")}
    row["forgetting"] = row["heldout loss"] - base_loss
    return Run(row={"method": method.name, **{c: row[c] for c in COLUMNS}}, model=trained, trainer=trainer, memory=peak)


def compare_methods(
    methods: list[Method],
    *,
    profile: Profile,
    base_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train,
    test,
    heldout: list[str],
    steps: int,
    seed: int = 0,
    progress: bool = True,
    on_run: Callable[[Method, Run], None] | None = None,
) -> pd.DataFrame:
    """The comparison table: the base model's row, then one row per method (same data, seed, steps).

    Columns: :data:`COLUMNS`, indexed by method name. Models are not kept: ``on_run(method, run)`` is
    called while each trained model is alive (to save an adapter, say).
    """
    from tqdm.auto import tqdm

    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    context = heldout_window(profile, base_model)
    base = evaluate(base_model, tokenizer, test, heldout, context)
    rows = [{"method": "base model", "kind": "none", "trainable params": 0, "trainable share": 0.0, **base, "forgetting": 0.0}]
    for method in tqdm(methods, desc="methods", disable=not progress):
        run = run_method(method, profile=profile, base_model=base_model, tokenizer=tokenizer, train=train, test=test,
                         heldout=heldout, steps=steps, seed=seed, base_loss=base["heldout loss"])
        rows.append(run.row)
        if on_run is not None:
            on_run(method, run)
        del run
    return pd.DataFrame(rows).set_index("method").reindex(columns=list(COLUMNS))
