"""A training setup: the choices (method, precision, optimizer, batch, checkpointing...) that set its memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from labkit.vocabulary import MEMORY_METHODS, METHODS, OPTIMIZERS, PRECISIONS
from labkit.vocabulary import check_choice as _choice

QUANTIZATIONS = (None, "int8", "nf4", "nf4-dq")
CHECKPOINTING = ("none", "full")
ATTENTION = ("eager", "sdpa", "flash")
LOGITS = ("full", "fused")
OBJECTIVES = ("sft", "preference", "rl")
ALGORITHMS = ("grpo", "rloo", "ppo")
"""RL algorithms with a memory model: GRPO (Shao et al. 2024), RLOO (Ahmadian et al. 2024), PPO (Schulman et al. 2017)."""
REWARDS = ("verifier", "model")
REFERENCES = ("none", "model", "precomputed")
SHARDING = ("none", "zero1", "zero2", "zero3")
"""How the training state is split over ``world_size`` devices (Rajbhandari et al. 2020, ZeRO): ``none``
(data parallel: every device holds everything), ``zero1`` (optimizer states and fp32 masters),
``zero2`` (also gradients; FSDP's SHARD_GRAD_OP), ``zero3`` (also weights; FSDP's FULL_SHARD)."""
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj")
"""Names of the decoder layers' linears across families (Phi-3 fuses q/k/v into ``qkv_proj`` and gate/up into
``gate_up_proj``); ``all-linear`` targets those a model has."""
SAVABLE_MODULES = ("embed_tokens", "lm_head")

BYTES = {"fp32": 4, "bf16-mixed": 2, "fp16-mixed": 2, "bf16": 2, "fp16": 2}
"""Bytes per element of the weights and activations the forward pass computes with."""


@dataclass(frozen=True)
class TrainingSetup:
    """One training step's configuration, as far as memory is concerned."""

    method: str
    """``full`` (every weight trains), ``lora`` (Hu et al. 2021), ``dora`` (Liu et al. 2024: LoRA plus a
    trained magnitude vector per output feature), ``qlora`` (Dettmers et al. 2023: LoRA on a 4-bit base),
    or ``rslora``/``pissa``/``loraplus`` (LoRA's tensors): any of ``labkit.vocabulary.MEMORY_METHODS``."""
    batch_size: int = 1
    """Micro-batch: sequences per forward/backward pass."""
    seq_len: int = 512
    """Tokens per sequence."""
    precision: str = "bf16-mixed"
    """``fp32``; ``bf16-mixed`` / ``fp16-mixed``: 16-bit weights, activations and gradients with an fp32
    master copy of the trainable weights that the optimizer updates (Micikevicius et al. 2018); pure ``bf16`` / ``fp16``."""
    quantization: str | None = None
    """Frozen base weights: ``None``; ``int8`` (LLM.int8, Dettmers et al. 2022); ``nf4``; ``nf4-dq``
    (NF4 with double quantization). ``qlora`` defaults to ``nf4-dq``."""
    optimizer: str = "adamw_torch"
    """By transformers' ``optim`` name: ``adamw_torch`` (two moments per trainable weight, in its dtype:
    Loshchilov & Hutter 2019), ``adamw_8bit`` (Dettmers et al. 2021), ``paged_adamw_32bit`` /
    ``paged_adamw_8bit`` (same bytes, evictable to CPU under pressure) or ``sgd`` (no state)."""
    r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32
    """LoRA scale numerator (memory does not depend on it; kept so a setup reads like a peft config)."""
    target_modules: tuple[str, ...] | str = "all-linear"
    """Linear layers that get adapters: names from ``LINEAR_MODULES`` or ``all-linear``."""
    modules_to_save: tuple[str, ...] = ()
    """Modules trained in full beside the adapters (``embed_tokens``, ``lm_head``): peft keeps a trainable copy."""
    gradient_checkpointing: str = "none"
    """``none`` or ``full`` (every decoder layer recomputed in backward; only its input is kept)."""
    attn_implementation: str = "sdpa"
    """``eager`` (materialises the s x s attention matrix), ``sdpa`` or ``flash`` (FlashAttention: Dao et al. 2022).
    ``estimate_memory`` and ``measure_memory`` default to the family's own (``Architecture.default_attention``)."""
    logits: str = "full"
    """``full``: transformers' loss keeps fp32 log-probabilities for every token (b x s x V);
    ``fused``: a fused linear + cross-entropy kernel (Liger, Cut Cross-Entropy) that never stores them."""
    world_size: int = 1
    """Devices training together, data parallel: ``batch_size`` is per device."""
    sharding: str = "none"
    """What is split over the ``world_size`` devices, from :data:`SHARDING`."""
    offload_optimizer: bool = False
    """Optimizer states and fp32 masters kept in CPU memory and updated there (ZeRO-Offload; DeepSpeed
    ``offload_optimizer``; FSDP's CPU offload also moves the weights): none of it on the device."""
    objective: str = "sft"
    """``sft`` (one sequence per example) or ``preference`` (DPO/IPO: each of the ``batch_size`` examples is a
    chosen and a rejected sequence, which TRL 1.16's ``DPOTrainer`` concatenates into one forward of
    ``2 * batch_size`` rows, scoring each by the summed log-probabilities of its completion)."""
    reference: str = "none"
    """The frozen reference model of preference training: ``none`` (reference-free, e.g. SimPO/ORPO, and SFT);
    ``model`` (held during training and run under ``no_grad`` on every batch: for ``full`` a second copy of the
    weights in the training weights' dtype; for adapter methods TRL 1.16 disables the adapter on the policy
    (``ref_model=None`` with a peft model, ``use_adapter(model, None)``), so no second copy); ``precomputed``
    (TRL's ``precompute_ref_log_probs=True``: the reference's per-sequence log-probs are computed before
    training, so a step holds only those, one fp32 value per sequence). For ``rl``: ``model`` when the KL
    coefficient ``beta > 0`` (TRL's GRPO default ``beta=0`` loads none; RLOO's ``0.05`` and PPO's KL penalty do)."""
    algorithm: str | None = None
    """Objective ``rl`` only, from :data:`ALGORITHMS`: ``grpo`` / ``rloo`` (a group baseline: no value model) or
    ``ppo`` (a value model: a trained copy of the backbone with a scalar head, as ``labkit.ppo.ValueModel``, with
    its own gradients and optimizer moments, whatever the policy's method)."""
    num_generations: int = 1
    """Objective ``rl``: completions sampled per prompt (GRPO/RLOO's G, at least 2); a step's forward has
    ``batch_size * num_generations`` rows."""
    completion_len: int = 0
    """Objective ``rl``: sampled tokens per completion; ``seq_len`` is the whole row, prompt plus completion."""
    reward: str = "verifier"
    """Objective ``rl``: ``verifier`` (a program scores the completion: no model) or ``model`` (a learned
    reward model of the same architecture with a scalar head, frozen)."""
    attention_groups: int = 1
    """S²-Attn (Chen et al. 2023, LongLoRA; ``labkit.longcontext``): each sequence's attention is split into
    this many groups of ``seq_len / attention_groups`` tokens (1: full attention). With ``eager`` attention
    -- and with ``labkit.longcontext``'s implementation, whose 5-D group tensors take SDPA's math kernel -- the
    probabilities kept shrink from s to a group's G per head and token; with ``sdpa``/``flash`` (a fused grouped
    kernel, as LongLoRA's FlashAttention code) no score matrix is kept either way, the term is already linear in
    s, so the saving S² buys there is compute, not memory."""

    def __post_init__(self):
        if self.method in METHODS and self.method not in MEMORY_METHODS:
            raise ValueError(f"method {self.method!r} has no memory model; expected one of {', '.join(MEMORY_METHODS)}")
        _choice("method", self.method, MEMORY_METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("quantization", self.quantization, QUANTIZATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("gradient_checkpointing", self.gradient_checkpointing, CHECKPOINTING)
        _choice("attn_implementation", self.attn_implementation, ATTENTION)
        _choice("logits", self.logits, LOGITS)
        _choice("sharding", self.sharding, SHARDING)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("reference", self.reference, REFERENCES)
        if self.objective == "sft" and self.reference != "none":
            raise ValueError(f"reference {self.reference!r} needs objective 'preference' (SFT has no reference model); "
                             "expected reference 'none' or objective 'preference'")
        if not isinstance(self.offload_optimizer, bool):
            raise ValueError(f"offload_optimizer must be True or False, got {self.offload_optimizer!r}")
        for field in ("batch_size", "seq_len", "r", "world_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        self._check_rl()
        if self.method == "qlora":
            if self.quantization is None:
                object.__setattr__(self, "quantization", "nf4-dq")
            elif self.quantization not in ("nf4", "nf4-dq"):
                raise ValueError("method 'qlora' quantizes the base to 4 bits; "
                                 f"quantization must be 'nf4' or 'nf4-dq', got {self.quantization!r}")
        elif self.method == "full" and self.quantization is not None:
            raise ValueError("method 'full' trains every weight, which cannot be quantized; "
                             f"got quantization {self.quantization!r} (use None)")
        elif self.quantization in ("nf4", "nf4-dq"):
            raise ValueError(f"method {self.method!r} with quantization {self.quantization!r}: LoRA on a 4-bit base is method 'qlora'")
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                raise ValueError(f"target_modules {self.target_modules!r}: "
                                 f"expected 'all-linear' or a list from {', '.join(LINEAR_MODULES)}")
            object.__setattr__(self, "target_modules", LINEAR_MODULES)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if not self.target_modules:
            raise ValueError("target_modules is empty; expected at least one of " + ", ".join(LINEAR_MODULES))
        for name in self.target_modules:
            _choice("target module", name, LINEAR_MODULES)
        for name in self.modules_to_save:
            _choice("modules_to_save entry", name, SAVABLE_MODULES)
        if self.method == "full" and self.modules_to_save:
            raise ValueError(f"modules_to_save {self.modules_to_save} only applies to adapter methods; method 'full' already trains them")

    def _check_rl(self) -> None:
        for field in ("num_generations", "attention_groups"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        if self.attention_groups > 1:
            if not isinstance(self.seq_len, int) or self.seq_len % self.attention_groups or (self.seq_len // self.attention_groups) % 2:
                raise ValueError(f"attention_groups {self.attention_groups}: seq_len {self.seq_len} must split into that many "
                                 "groups of an even number of tokens (S² shifts half the heads by half a group)")
            if self.objective == "rl":
                raise ValueError("attention_groups > 1 (S²-Attn) is for training on long sequences; objective 'rl' "
                                 "generates, which S² cannot (expected attention_groups 1)")
        if self.objective != "rl":
            defaults = dict(algorithm=None, num_generations=1, completion_len=0, reward="verifier")
            changed = [f for f, v in defaults.items() if getattr(self, f) != v]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply to objective 'rl'; got objective {self.objective!r}")
            return
        if self.algorithm is None:
            raise ValueError(f"objective 'rl' needs an algorithm; expected one of {', '.join(ALGORITHMS)}")
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("reward", self.reward, REWARDS)
        if self.reference == "precomputed":
            raise ValueError("reference 'precomputed' cannot apply to objective 'rl': its completions are sampled during "
                             "training; expected reference 'none' (beta = 0) or 'model' (beta > 0)")
        if self.algorithm in ("grpo", "rloo") and self.num_generations < 2:
            raise ValueError(f"algorithm {self.algorithm!r} compares the completions of one prompt; num_generations must "
                             f"be >= 2, got {self.num_generations}")
        if isinstance(self.completion_len, bool) or not isinstance(self.completion_len, int) or not 1 <= self.completion_len < self.seq_len:
            raise ValueError(f"objective 'rl': completion_len must be an integer in [1, seq_len - 1] = [1, {self.seq_len - 1}] "
                             f"(seq_len is prompt plus completion), got {self.completion_len!r}")
        if self.sharding != "none" or self.offload_optimizer:
            raise ValueError("objective 'rl' is estimated on one device: sharding must be 'none' and offload_optimizer False")

    @property
    def adapters(self) -> bool:
        """True for LoRA-family methods (frozen base plus trained adapters)."""
        return self.method != "full"

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of weights-in-use and activations (2 for bf16/fp16, 4 for fp32)."""
        return BYTES[self.precision]

    @property
    def sequences(self) -> int:
        """Rows of one forward pass: ``batch_size``, doubled for ``preference`` (chosen and rejected), times
        ``num_generations`` for ``rl``."""
        return self.batch_size * (2 if self.objective == "preference" else self.num_generations)

    @property
    def tokens(self) -> int:
        """Tokens of one forward pass: ``sequences * seq_len``."""
        return self.sequences * self.seq_len


def make_setup(method: str, **options) -> TrainingSetup:
    """A :class:`TrainingSetup`; unknown option names raise ValueError listing the known ones."""
    known = {f.name for f in dataclasses.fields(TrainingSetup)} - {"method"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; expected some of {', '.join(sorted(known))}")
    return TrainingSetup(method=method, **options)
