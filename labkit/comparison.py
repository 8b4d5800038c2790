"""One harness for every fine-tuning method: same data, seed and step budget; one row of measurements each.

Each run trains with TRL's ``SFTTrainer`` and reports trainable parameters, the peak tensor memory of
one real training step (measured) next to ``labkit.memory.estimate_memory``'s figure for the same batch,
wall time, task score with a Wilson interval and forgetting (``labkit.eval.heldout``). What every run
shares — model, data, budget, seed — is one :class:`Experiment`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.eval.heldout import VIRTUAL_TOKEN_ROOM, forgetting, heldout_loss, heldout_texts
from labkit.memory.peak import PeakMemory
from labkit.profiles import Profile
from labkit.tuning import learning_rate
from labkit.vocabulary import LORA_METHODS, MEMORY_METHODS, METHODS, OPTIMIZERS, check_choice, method_label, precision_for

COLUMNS = ("kind", "trainable params", "trainable share", "peak MiB", "estimated MiB", "train s",
           "accuracy", "ci_low", "ci_high", "heldout loss", "forgetting", "final train loss")
"""The columns of a comparison table (one row per method, plus the base model)."""


@dataclass
class Method:
    """One fine-tuning recipe: a method from ``labkit.vocabulary.METHODS`` and its knobs."""

    name: str
    """Row label in the table."""
    kind: str
    """The method: one of ``labkit.vocabulary.METHODS``."""
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
    """Optimizer, by transformers' ``optim`` name: one of ``labkit.vocabulary.OPTIMIZERS``."""
    extra: dict = field(default_factory=dict)
    """Further keyword arguments for the peft config (e.g. ``prompt_tuning_init``)."""

    def __post_init__(self):
        check_choice(f"method {self.name!r}: kind", self.kind, METHODS)
        if not self.learning_rate > 0:
            raise ValueError(f"method {self.name!r}: learning_rate must be > 0, got {self.learning_rate}")
        if self.r < 1 or self.num_virtual_tokens < 1:
            raise ValueError(f"method {self.name!r}: r and num_virtual_tokens must be >= 1, got {self.r}, {self.num_virtual_tokens}")
        check_choice(f"method {self.name!r}: optim", self.optim, OPTIMIZERS)
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
        if self.kind in LORA_METHODS:
            target = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
            return LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.lora_alpha, lora_dropout=0.0,
                              target_modules=target, use_dora=self.kind == "dora", use_rslora=self.kind == "rslora",
                              init_lora_weights="pissa" if self.kind == "pissa" else True, **self.extra)
        if self.kind == "prompt":
            return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, **self.extra)
        if self.kind == "prefix":
            return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, **self.extra)
        return IA3Config(task_type="CAUSAL_LM", **self.extra)


def default_methods(profile: Profile, *, r: int = 8, num_virtual_tokens: int = 16, kinds=METHODS) -> list[Method]:
    """Each method of ``kinds`` (default: all) once, at rank ``r`` (alpha 2r) and its tuned ``labkit.tuning.learning_rate``."""
    for kind in kinds:
        check_choice("kind", kind, METHODS)
    return [Method(method_label(kind) + (f" r={r}" if kind in LORA_METHODS else ""), kind, learning_rate(kind, profile),
                   r=r, num_virtual_tokens=num_virtual_tokens) for kind in kinds]


@dataclass
class Run:
    """What one method's run produced: its table row and the trained model (for saving, merging, sampling)."""

    row: dict
    model: PreTrainedModel
    trainer: object
    memory: PeakMemory
    """The measured step: ``peak_bytes``, ``peak_breakdown`` and the ``batch_shape`` it trained on."""
    correct: list[bool]
    """Per scored prompt, whether the trained model answered exactly (for paired comparisons)."""


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters that receive gradients (for 4-bit weights, bitsandbytes' packed storage is never trainable)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fresh_base(method: Method, profile: Profile, base_model: PreTrainedModel) -> PreTrainedModel:
    """A copy of the base model as ``method`` trains it: for QLoRA a new 4-bit load, prepared by peft
    (its unquantized weights — embeddings, norms — cast to fp32, as QLoRA trains them)."""
    if method.kind == "qlora":
        from peft import prepare_model_for_kbit_training

        from labkit.profiles import model_path
        from labkit.quant import load_4bit

        model = load_4bit(model_path(profile), compute_dtype=profile.torch_dtype)
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
    """``labkit.memory.estimate_memory``'s total for this method and batch; NaN where it has no model of the method."""
    from labkit.memory import estimate_memory
    from labkit.memory.setup import LINEAR_MODULES

    if method.kind not in MEMORY_METHODS:  # prompt, prefix, IA3
        return float("nan")
    targets = LINEAR_MODULES if method.target_modules == "all-linear" else tuple(method.target_modules)
    report = estimate_memory(config, method=method.kind, device=profile.device, batch_size=batch_shape[0],
                             seq_len=batch_shape[1], precision=precision_for(profile.dtype), r=method.r,
                             target_modules=targets, optimizer=method.optim,
                             gradient_checkpointing="full" if checkpointing else "none")
    return float(report.total_bytes)


@dataclass
class Experiment:
    """What every run of a comparison shares: base model, data, step budget, seed and held-out text."""

    profile: Profile
    base_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train: object
    """Training rows (a ``datasets.Dataset`` in a TRL format)."""
    test: object
    """The prompts every run is scored on: the test split in the chapters, the validation split when tuning."""
    steps: int
    """Optimizer steps per run."""
    seed: int = 0
    heldout: list[str] | None = None
    """Text forgetting is measured on; ``None``: ``labkit.eval.heldout_texts(profile.heldout_chars)``."""
    _base: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if len(self.test) == 0 or len(self.train) == 0:
            raise ValueError(f"train and test need rows; got {len(self.train)} and {len(self.test)}")
        if self.heldout is None:
            self.heldout = heldout_texts(self.profile.heldout_chars)

    def heldout_loss(self, model: PreTrainedModel) -> float:
        """``labkit.eval.heldout.heldout_loss`` of ``model`` on this experiment's held-out text and context."""
        return heldout_loss(model, self.tokenizer, max_seq_len=self.profile.max_seq_len, texts=self.heldout)

    def evaluate(self, model: PreTrainedModel) -> dict:
        """Task score (exact match, Wilson 95% interval, per-prompt ``correct``) and held-out loss of ``model``."""
        from labkit.eval import accuracy_table, score_examples

        scores = score_examples(model, self.tokenizer, self.test, progress=False, max_new_tokens=self.profile.max_new_tokens)
        overall = accuracy_table(scores).loc["all"]
        return {"accuracy": overall.accuracy, "ci_low": overall.ci_low, "ci_high": overall.ci_high,
                "heldout loss": self.heldout_loss(model), "correct": scores["correct"].tolist()}

    @property
    def base(self) -> dict:
        """The base model's :meth:`evaluate` (computed once)."""
        if self._base is None:
            self._base = self.evaluate(self.base_model)
        return self._base


def train_method(method: Method, experiment: Experiment, *, callbacks=(), eval_dataset=None, **config_overrides):
    """Train a copy of the experiment's base model with ``method``: the experiment's steps and seed, the
    method's rate and optimizer; ``config_overrides`` go to ``labkit.train.sft_config`` and win. Returns the trainer.

    ``eval_dataset``: evaluated while training when the config asks (``eval_strategy``); once
    ``labkit.train.sft`` has returned, ``trainer.evaluate()`` no longer works (TRL's fused forward is removed).
    """
    from labkit.train import sft, sft_config

    ex = experiment
    torch.manual_seed(ex.seed)  # adapters are drawn here: every method and rerun gets the same draw
    model, optimizer = prepare_model(method, ex.profile, ex.base_model)
    settings = dict(max_steps=ex.steps, learning_rate=method.learning_rate, seed=ex.seed, optim=method.optim)
    config = sft_config(ex.profile, kind=method.kind, **(settings | config_overrides))
    return sft(model, ex.tokenizer, ex.train, config, eval_dataset=eval_dataset, callbacks=callbacks,
               optimizers=(optimizer, None))


def run_method(method: Method, experiment: Experiment, **config_overrides) -> Run:
    """:func:`train_method`, then measure and score the result.

    ``config_overrides`` go to ``labkit.train.sft_config`` and win (e.g. ``logging_steps``, or
    ``max_steps`` for a longer run than the experiment's).
    """
    ex = experiment
    base = ex.base
    peak = PeakMemory(step=min(1, ex.steps - 1))
    start = time.perf_counter()
    trainer = train_method(method, ex, callbacks=[peak], **config_overrides)
    seconds = time.perf_counter() - start
    config = trainer.args
    trained = trainer.model
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainable = trainable_parameters(trained)
    scores = ex.evaluate(trained)
    row = {"kind": method.kind, "trainable params": trainable,
           "trainable share": trainable / sum(p.numel() for p in ex.base_model.parameters()),
           "peak MiB": peak.peak_bytes / 2**20,
           "estimated MiB": estimated_bytes(method, ex.profile, ex.base_model.config, peak.batch_shape,
                                            config.gradient_checkpointing) / 2**20,
           "train s": seconds, **scores, "forgetting": forgetting(scores["heldout loss"], base["heldout loss"]),
           "final train loss": losses[-1] if losses else float("nan")}
    return Run(row={"method": method.name, **{c: row[c] for c in COLUMNS}}, model=trained, trainer=trainer,
               memory=peak, correct=scores["correct"])


@dataclass
class Comparison:
    """A comparison's result: the table and every system's per-prompt correctness on the same prompts."""

    table: pd.DataFrame
    """Columns :data:`COLUMNS`, indexed by method name; the first row is the base model."""
    correct: pd.DataFrame
    """One column per system (base model included), one row per scored prompt: True where it answered exactly."""

    def paired(self, *, reference: str | None = None, systems: list[str] | None = None, alpha: float = 0.05,
               seed: int = 0) -> pd.DataFrame:
        """``labkit.eval.paired_comparison`` of ``systems`` (default: all; all pairs, or each against ``reference``).

        The Holm adjustment covers the comparisons in the returned table, so name only the systems in question.
        """
        from labkit.eval import paired_comparison

        correct = self.correct if systems is None else self.correct[list(systems)]
        return paired_comparison(correct.to_dict("list"), reference=reference, alpha=alpha, seed=seed)


def compare_methods(
    methods: list[Method],
    experiment: Experiment,
    *,
    progress: bool = True,
    on_run: Callable[[Method, Run], None] | None = None,
    **config_overrides,
) -> Comparison:
    """The base model's row, then one row per method, all trained and scored alike (same data, seed, steps).

    Models are not kept: ``on_run(method, run)`` is called while each trained model is alive (to save
    an adapter, say). ``config_overrides`` go to every run's ``labkit.train.sft_config``.
    """
    from tqdm.auto import tqdm

    names = [m.name for m in methods]
    if len(set(names)) != len(names) or "base model" in names:
        raise ValueError(f"method names must be unique and not 'base model', got {names}")
    base = experiment.base
    rows = [{"method": "base model", "kind": "none", "trainable params": 0, "trainable share": 0.0,
             **{k: v for k, v in base.items() if k != "correct"}, "forgetting": 0.0}]
    correct = {"base model": base["correct"]}
    for method in tqdm(methods, desc="methods", disable=not progress):
        run = run_method(method, experiment, **config_overrides)
        rows.append(run.row)
        correct[method.name] = run.correct
        if on_run is not None:
            on_run(method, run)
        del run
    return Comparison(table=pd.DataFrame(rows).set_index("method").reindex(columns=list(COLUMNS)),
                      correct=pd.DataFrame(correct))
