"""Small random-weight models of an architecture, prepared for a training setup, and their optimizer: what ``measure_memory`` runs."""

from __future__ import annotations

import tempfile

import torch

from labkit.memory.architectures import Architecture
from labkit.memory.setup import TrainingSetup

DTYPES = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16, "bf16": torch.bfloat16,
          "fp16": torch.float16}
"""The dtype the weights are built in, per precision (mixed precision keeps 16-bit weights and fp32 masters)."""


def hf_config(arch: Architecture, setup: TrainingSetup):
    """A transformers config of ``arch``'s family for ``setup`` (its attention implementation; S²-Attn's groups)."""
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, MixtralConfig, Olmo2Config, Phi3Config,
                              Qwen2Config, Qwen3Config, Qwen3MoeConfig)

    common = dict(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
                  num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim,
                  vocab_size=arch.vocab_size, tie_word_embeddings=arch.tie_word_embeddings, use_cache=False,
                  max_position_embeddings=max(setup.seq_len, 128), pad_token_id=0, bos_token_id=0, eos_token_id=0)
    attn = {"flash": "flash_attention_2"}.get(setup.attn_implementation, setup.attn_implementation)
    if setup.attention_groups > 1:  # labkit.longcontext's S²-Attn
        from labkit.memory.s2 import register_s2

        attn = register_s2(setup.attention_groups)
    if arch.model_type == "qwen2":
        return Qwen2Config(**common, attn_implementation=attn)
    if arch.model_type in ("qwen3", "olmo2", "phi3"):
        cls = {"qwen3": Qwen3Config, "olmo2": Olmo2Config, "phi3": Phi3Config}[arch.model_type]
        return cls(**common, attn_implementation=attn)
    if arch.model_type in ("gemma2", "gemma3_text"):
        cls = Gemma2Config if arch.model_type == "gemma2" else Gemma3TextConfig
        caps = dict(attn_logit_softcapping=50.0 if arch.attn_softcap else None,
                    final_logit_softcapping=30.0 if arch.logit_softcap else None)
        window = dict(sliding_window=arch.sliding_window or 1 << 20) if arch.model_type == "gemma3_text" else {}
        return cls(**common, **caps, **window, attn_implementation=attn)
    if arch.model_type == "mixtral":
        return MixtralConfig(**common, num_local_experts=arch.num_experts, num_experts_per_tok=arch.experts_per_token,
                             sliding_window=None, attn_implementation=attn)
    if arch.model_type == "qwen3_moe":
        return Qwen3MoeConfig(**{**common, "intermediate_size": 4 * arch.hidden_size}, moe_intermediate_size=arch.intermediate_size,
                              num_experts=arch.num_experts, num_experts_per_tok=arch.experts_per_token, norm_topk_prob=True,
                              attn_implementation=attn)
    if arch.model_type == "mistral":
        return MistralConfig(**common, sliding_window=None, attn_implementation=attn)
    return LlamaConfig(**common, attention_bias=arch.attention_bias, attn_implementation=attn)


def build_model(arch: Architecture, setup: TrainingSetup, seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    """A random-weight model of ``arch`` prepared for ``setup`` (quantized, adapters, checkpointing), in train mode."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(seed)
    dtype = DTYPES[setup.precision]
    config = hf_config(arch, setup)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if setup.quantization is not None:  # bitsandbytes quantizes while loading, so go through a local checkpoint
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                   bnb_4bit_use_double_quant=setup.quantization == "nf4-dq")
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, dtype=dtype, device_map=device,
                                                         attn_implementation=config._attn_implementation)
        from labkit.quant import guard_cpu_4bit

        guard_cpu_4bit(model)  # without it, this CPU path can train with wrong gradients
    else:
        model.to(device)
    if setup.gradient_checkpointing == "full":
        model.activation_checkpointing_enable()
    if setup.adapters:
        from peft import LoraConfig, get_peft_model

        # only the linears this family has: peft maps gate/up/down_proj onto Qwen3-MoE's 3-D expert parameters
        # (target_parameters), which labkit.memory does not model; "all-linear" leaves experts frozen too
        targets = [name for name in setup.target_modules if name in arch.linear_shapes()]
        lora = LoraConfig(r=setup.r, lora_alpha=setup.lora_alpha, lora_dropout=0.0, target_modules=targets,
                          use_dora=setup.method == "dora", modules_to_save=list(setup.modules_to_save) or None)
        model = get_peft_model(model, lora, autocast_adapter_dtype=False)  # adapters in the compute dtype
    model.train()
    return model


def make_optimizer(setup: TrainingSetup, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """``setup.optimizer`` over ``params`` (bitsandbytes' 8-bit AdamW where asked): its states are what is measured."""
    if setup.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        return torch.optim.AdamW(params, lr=1e-4)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if setup.optimizer.startswith("paged") else bnb.optim.AdamW8bit
    return cls(params, lr=1e-4)
