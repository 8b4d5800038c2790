"""Preference methods side by side: KTO, ORPO and SimPO through TRL beside DPO and IPO, each run measured alike."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.profiles import Profile
from labkit.vocabulary import check_choice

KINDS = ("dpo", "ipo", "kto", "orpo", "simpo")
"""The preference methods :func:`train_preference` runs: DPO and IPO (``labkit.preferences.dpo_config``'s
``sigmoid`` and ``ipo`` losses), KTO (unpaired labels), ORPO and SimPO (no reference model)."""
NEEDS_REFERENCE = ("dpo", "ipo", "kto")
"""The kinds whose loss compares the policy with a frozen reference model."""
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
"""β of each kind when a :class:`PreferenceMethod` names none: TRL's defaults; SimPO's from Meng et al. 2024."""
COLUMNS = ("kind", "learning rate", "beta", "exact match", "ci_low", "ci_high", "reward accuracy",
           "chosen logp change", "rejected logp change", "KL to reference", "forgetting", "train s", "peak MiB",
           "estimated MiB")
"""The keys of one run's row (:func:`run_preference`), besides ``method``."""
PREFERENCE_LEARNING_RATE = 1e-6
"""The configs' default peak rate (TRL's default for KTO, ORPO and CPO). Choose yours on validation prompts."""


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _config(cls, profile: Profile, output_dir: str | None, settings: dict, overrides: dict):
    from labkit.train import trainer_defaults

    defaults = trainer_defaults(profile, overrides.get("max_steps", profile.train_steps), output_dir)
    defaults |= dict(learning_rate=PREFERENCE_LEARNING_RATE, logging_steps=1) | settings
    return cls(**(defaults | overrides))


def kto_config(profile: Profile, *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
               output_dir: str | None = None, **overrides):
    """A TRL ``KTOConfig`` with this book's defaults on ``profile`` (``labkit.train.trainer_defaults``,
    :data:`PREFERENCE_LEARNING_RATE`, a log entry every step); ``overrides`` win.

    KTO (Ethayarajh et al. 2024) learns from single answers labelled desirable or not. ``desirable_weight``
    and ``undesirable_weight`` (λ_D, λ_U) weigh the two kinds' losses; see :func:`desirable_weight_for`.
    KTO estimates its reference point from mismatched prompts and answers within a batch, so a batch needs
    at least 2 rows.
    """
    from trl import KTOConfig

    _check_positive(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    batch = overrides.get("per_device_train_batch_size", profile.batch_size)
    if batch < 2:
        raise ValueError(f"KTO needs per_device_train_batch_size >= 2 (its KL estimate pairs rows within a batch), got {batch}")
    return _config(KTOConfig, profile, output_dir, dict(beta=beta, desirable_weight=desirable_weight,
                                                        undesirable_weight=undesirable_weight), overrides)


def desirable_weight_for(labels: Sequence[bool], *, ratio: float = 1.0, undesirable_weight: float = 1.0) -> float:
    """λ_D such that λ_D·n_D / (λ_U·n_U) = ``ratio`` for these labels (``True`` = desirable).

    Ethayarajh et al. 2024 (KTO, section 4) recommend weights with this ratio in [1, 4/3]: with fewer
    desirable than undesirable answers, raise λ_D rather than leave the undesirable ones to dominate.
    """
    _check_positive(ratio=ratio, undesirable_weight=undesirable_weight)
    labels = [bool(label) for label in labels]
    desirable, undesirable = sum(labels), len(labels) - sum(labels)
    if desirable == 0 or undesirable == 0:
        raise ValueError(f"labels need both kinds; got {desirable} desirable and {undesirable} undesirable")
    return ratio * undesirable_weight * undesirable / desirable


def orpo_config(profile: Profile, *, beta: float = 0.1, output_dir: str | None = None, **overrides):
    """A TRL ``ORPOConfig`` (``trl.experimental.orpo``) with this book's defaults on ``profile``; ``overrides`` win.

    ORPO (Hong et al. 2024) adds β·(−log σ(log odds(chosen) − log odds(rejected))) to the NLL of the chosen
    answers: fine-tuning and preference in one stage, with no reference model. TRL's ``beta`` is the paper's λ.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
    from trl.experimental.orpo import ORPOConfig

    _check_positive(beta=beta)  # remove_unused_columns: TRL's pair collator needs the text columns (it says so, loudly)
    return _config(ORPOConfig, profile, output_dir, dict(beta=beta, remove_unused_columns=False), overrides)


def simpo_config(profile: Profile, *, beta: float = 2.0, gamma_beta_ratio: float = 0.5, output_dir: str | None = None,
                 **overrides):
    """A TRL ``CPOConfig`` (``trl.experimental.cpo``) for SimPO (Meng et al. 2024); ``overrides`` win.

    SimPO's loss is ``−log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ)``: length-normalised log-probabilities,
    a target margin γ = ``gamma_beta_ratio``·β, no reference model and no NLL term (``cpo_alpha=0``).
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
    from trl.experimental.cpo import CPOConfig

    _check_positive(beta=beta, gamma_beta_ratio=gamma_beta_ratio)
    settings = dict(loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma_beta_ratio * beta,
                    remove_unused_columns=False)
    return _config(CPOConfig, profile, output_dir, settings, overrides)


def _train(trainer):
    from labkit.train import labelled_positions_only, remove_training_wrappers

    with labelled_positions_only():
        trainer.train()
    for model in filter(None, (trainer.model, getattr(trainer, "ref_model", None))):
        remove_training_wrappers(model)
        model.eval()
    return trainer


def train_kto(policy: PreTrainedModel, reference: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, rows,
              config, *, callbacks=()):
    """Train ``policy`` in place with TRL's ``KTOTrainer`` against ``reference`` on ``prompt``/``completion``/``label``
    rows (``labkit.tasks.unpaired_preferences``); returns the trainer. As ``labkit.preferences.train_dpo``:
    ``reference=None`` freezes a copy of ``policy`` as it is now; afterwards both models are in eval mode."""
    from trl import KTOTrainer

    missing = {"prompt", "completion", "label"} - set(rows.column_names)
    if missing:
        raise ValueError(f"KTO rows have no {sorted(missing)}; expected labkit.tasks.unpaired_preferences' columns")
    reference = copy.deepcopy(policy) if reference is None else reference
    reference.requires_grad_(False)
    policy.requires_grad_(True)
    return _train(KTOTrainer(model=policy, ref_model=reference, args=config, train_dataset=rows,
                             processing_class=tokenizer, callbacks=list(callbacks)))


def train_orpo(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs, config, *, callbacks=()):
    """Train ``policy`` in place with TRL's ``ORPOTrainer`` (or ``CPOTrainer`` for a :func:`simpo_config`) on
    ``prompt``/``chosen``/``rejected`` pairs; no reference model. Returns the trainer, the model in eval mode."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    missing = {"prompt", "chosen", "rejected"} - set(pairs.column_names)
    if missing:
        raise ValueError(f"pairs have no {sorted(missing)}; expected labkit.tasks.preference_pairs' columns")
    policy.requires_grad_(True)
    trainer_class = CPOTrainer if isinstance(config, CPOConfig) else ORPOTrainer
    return _train(trainer_class(model=policy, args=config, train_dataset=pairs, processing_class=tokenizer,
                                callbacks=list(callbacks)))


@dataclass
class PreferenceMethod:
    """One preference recipe: a kind from :data:`KINDS`, its rate, β and further config fields."""

    name: str
    """Row label in the table."""
    kind: str
    """One of :data:`KINDS`."""
    learning_rate: float
    """Peak rate (cosine schedule with warm-up); choose it on validation."""
    beta: float | None = None
    """β of DPO, KTO and SimPO, IPO's τ, ORPO's λ; ``None``: :data:`DEFAULT_BETA` of the kind."""
    options: dict = field(default_factory=dict)
    """Further keyword arguments for the kind's config (``desirable_weight``, ``gamma_beta_ratio``...)."""

    def __post_init__(self):
        check_choice(f"method {self.name!r}: kind", self.kind, KINDS)
        if not self.learning_rate > 0:
            raise ValueError(f"method {self.name!r}: learning_rate must be > 0, got {self.learning_rate}")
        self.beta = DEFAULT_BETA[self.kind] if self.beta is None else self.beta
        if not self.beta > 0:
            raise ValueError(f"method {self.name!r}: beta must be > 0, got {self.beta}")

    def config(self, profile: Profile, **overrides):
        """The TRL config of this method on ``profile``: ``options``, then ``overrides``, win over the defaults."""
        from labkit.preferences import dpo_config

        settings = dict(beta=self.beta, learning_rate=self.learning_rate) | self.options | overrides
        if self.kind in ("dpo", "ipo"):
            return dpo_config(profile, loss_type="sigmoid" if self.kind == "dpo" else "ipo", **settings)
        return {"kto": kto_config, "orpo": orpo_config, "simpo": simpo_config}[self.kind](profile, **settings)


def train_preference(method: PreferenceMethod, policy: PreTrainedModel, reference: PreTrainedModel | None,
                     tokenizer: PreTrainedTokenizerBase, data, config, *, callbacks=()):
    """Train ``policy`` in place with ``method``'s TRL trainer and ``config``; returns the trainer.

    ``data``: unpaired rows for KTO, pairs otherwise. ``reference`` is used by :data:`NEEDS_REFERENCE` kinds
    (``None``: a frozen copy of ``policy``) and ignored by the others.
    """
    from labkit.preferences import train_dpo

    if method.kind in NEEDS_REFERENCE:
        run = train_dpo if method.kind in ("dpo", "ipo") else train_kto
        return run(policy, reference, tokenizer, data, config, callbacks=callbacks)
    return train_orpo(policy, tokenizer, data, config, callbacks=callbacks)


def estimated_mib(kind: str, profile: Profile, model_config, *, pairs: int, seq_len: int) -> float:
    """``labkit.memory.estimate_memory``'s MiB for a full fine-tune with ``kind``'s objective and reference;
    NaN while ``labkit.memory.TrainingSetup`` has no ``reference`` field to say what the reference costs.

    The estimate models a DPO step: ``pairs`` chosen and ``pairs`` rejected rows with gradients. A KTO step of
    ``pairs`` rows has gradients on those rows only (its KL rows run without), so it is estimated as half as
    many pairs."""
    import dataclasses

    from labkit.memory import estimate_memory
    from labkit.memory.setup import TrainingSetup
    from labkit.vocabulary import precision_for

    if "reference" not in {f.name for f in dataclasses.fields(TrainingSetup)}:
        return float("nan")
    report = estimate_memory(model_config, method="full", objective="preference",
                             reference="model" if kind in NEEDS_REFERENCE else "none",
                             batch_size=max(1, pairs // 2) if kind == "kto" else pairs,
                             seq_len=seq_len, device=profile.device, precision=precision_for(profile.dtype))
    return report.total_bytes / 2**20


@dataclass
class PreferenceBench:
    """What every preference run is measured on, against one reference model (the fine-tuned start)."""

    profile: Profile
    tokenizer: PreTrainedTokenizerBase
    reference: PreTrainedModel
    """The model drift, KL and forgetting are measured from (and DPO, IPO and KTO train against)."""
    prompts: object
    """Scored prompts (``labkit.tasks.verifiable_tasks(..., fmt="completion")``): validation when choosing, test once."""
    probe: object
    """Fixed ``prompt``/``chosen``/``rejected`` pairs for reward accuracy, log-prob drift and KL."""
    heldout: list[str]
    """Text forgetting is measured on (``labkit.eval.heldout_texts``)."""
    _start: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if len(self.prompts) == 0 or len(self.probe) == 0 or not self.heldout:
            raise ValueError(f"prompts, probe pairs and held-out text need rows; got {len(self.prompts)}, "
                             f"{len(self.probe)} and {len(self.heldout)}")

    def measure(self, model: PreTrainedModel) -> dict:
        """Exact match with its Wilson 95% interval and per-prompt ``correct``; reward accuracy and the chosen and
        rejected log-prob changes on the probe pairs (``labkit.preferences.logprob_drift``); KL to the reference on
        the probe's chosen answers; held-out loss and forgetting."""
        from labkit.eval import forgetting, heldout_loss, score_examples, wilson_interval
        from labkit.preferences import kl_to_reference, logprob_drift

        scores = score_examples(model, self.tokenizer, self.prompts, progress=False,
                                max_new_tokens=self.profile.max_new_tokens)
        correct = scores["correct"].tolist()
        ci_low, ci_high = wilson_interval(sum(correct), len(correct))
        drift = logprob_drift(model, self.reference, self.tokenizer, self.probe)
        kl = kl_to_reference(model, self.reference, self.tokenizer, self.probe["prompt"], self.probe["chosen"])
        loss = heldout_loss(model, self.tokenizer, max_seq_len=self.profile.max_seq_len, texts=self.heldout)
        start_loss = loss if self._start is None else self._start["heldout loss"]
        return {"exact match": float(np.mean(correct)), "ci_low": ci_low, "ci_high": ci_high,
                "reward accuracy": drift["reward accuracy"], "chosen logp change": drift["chosen change"],
                "rejected logp change": drift["rejected change"], "KL to reference": kl, "heldout loss": loss,
                "forgetting": forgetting(loss, start_loss), "correct": correct}

    @property
    def start(self) -> dict:
        """:meth:`measure` of the reference itself (computed once): its forgetting and KL are 0."""
        if self._start is None:
            self._start = self.measure(self.reference)
        return self._start


@dataclass
class PreferenceRun:
    """One run's table row (keys ``method`` and :data:`COLUMNS`), its per-prompt correctness, model and trainer."""

    row: dict
    correct: list[bool]
    model: PreTrainedModel
    trainer: object


def run_preference(method: PreferenceMethod, bench: PreferenceBench, start: PreTrainedModel, data, *, steps: int,
                   batch_size: int, seed: int = 0, **overrides) -> PreferenceRun:
    """Train a copy of ``start`` with ``method`` for ``steps`` steps of ``batch_size`` rows, then measure it on
    ``bench``: one row of :data:`COLUMNS`, with the peak tensor memory of one real step (``labkit.memory.PeakMemory``).
    ``overrides`` go to the method's config and win."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    bench.start  # measured before training: forgetting is relative to the reference
    config = method.config(bench.profile, **(dict(max_steps=steps, per_device_train_batch_size=batch_size, seed=seed)
                                             | overrides))
    policy = copy.deepcopy(start)
    from labkit.memory import PeakMemory

    peak = PeakMemory(step=min(1, steps - 1))
    began = time.perf_counter()
    trainer = train_preference(method, policy, bench.reference, bench.tokenizer, data, config, callbacks=[peak])
    seconds = time.perf_counter() - began
    scores = bench.measure(policy)
    seq_len = peak.batch_shape[1] if peak.batch_shape else bench.profile.max_seq_len
    row = {"kind": method.kind, "learning rate": method.learning_rate, "beta": method.beta,
           **{k: scores[k] for k in COLUMNS if k in scores}, "train s": seconds, "peak MiB": peak.peak_bytes / 2**20,
           "estimated MiB": estimated_mib(method.kind, bench.profile, start.config, pairs=batch_size, seq_len=seq_len)}
    return PreferenceRun({"method": method.name, **{c: row[c] for c in COLUMNS}}, scores["correct"], policy, trainer)
