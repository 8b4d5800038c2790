"""labkit.memory on the families users fine-tune now: Qwen3, OLMo-2, Phi-3, Gemma-2/3, Mixtral, Qwen3-MoE, term by term."""

import itertools
import json

import pytest
from memory_checks import STATE_TERMS, relative_errors
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, MixtralConfig, Olmo2Config, Phi3Config, Qwen3Config,
                          Qwen3MoeConfig)

from labkit.memory import Architecture, estimate_memory, resolve
from labkit.memory.architectures import _FAMILY


def _tiny(name, model_type, h, i, heads, kv, head_dim, vocab, tie, experts=0, top_k=0, layers=2, **extra):
    return Architecture(name, model_type, h, i, layers, heads, kv, head_dim, vocab, tie, num_experts=experts,
                        experts_per_token=top_k, **_FAMILY.get(model_type, {}), **extra)


FAMILIES = {  # head_dim != hidden / heads where the family allows it (Qwen3, OLMo-2 via config)
    "qwen3": _tiny("tiny-qwen3", "qwen3", 64, 160, 4, 2, 24, 1000, True),
    "olmo2": _tiny("tiny-olmo2", "olmo2", 64, 160, 4, 2, 16, 1000, False),
    "phi3": _tiny("tiny-phi3", "phi3", 64, 160, 4, 4, 16, 1000, False),
    "phi3-gqa": _tiny("tiny-phi3-gqa", "phi3", 64, 128, 4, 2, 16, 900, False),
    "mixtral": _tiny("tiny-mixtral", "mixtral", 64, 96, 4, 2, 16, 1000, False, experts=4, top_k=2),
    "qwen3_moe": _tiny("tiny-qwen3-moe", "qwen3_moe", 64, 48, 4, 2, 16, 1000, True, experts=8, top_k=2),
    "gemma2": _tiny("tiny-gemma2", "gemma2", 64, 160, 4, 2, 24, 1000, True),  # both soft-caps
    # six layers: five sliding-window ones (window 8, shorter than some sequences) and a global one
    "gemma3_text": _tiny("tiny-gemma3", "gemma3_text", 64, 160, 4, 1, 32, 1000, True, layers=6, sliding_window=8),
}
SHAPES = [(1, 16), (2, 24), (3, 12)]


def _cases():
    grid = itertools.product(FAMILIES, ["full", "lora", "dora", "qlora"], [("fp32", "eager"), ("bf16-mixed", "sdpa"), ("bf16", "eager")])
    cases = []
    for n, (family, method, (precision, attn)) in enumerate(grid):
        batch, seq = SHAPES[n % len(SHAPES)]
        attn = "eager" if family == "gemma2" else attn  # transformers refuses SDPA for Gemma-2
        options = dict(method=method, precision=precision, attn_implementation=attn, batch_size=batch, seq_len=seq, r=4,
                       gradient_checkpointing="full" if n % 5 == 4 else "none")
        if method != "full" and n % 3 == 0:
            options["modules_to_save"] = ("lm_head",)
        cases.append(pytest.param(FAMILIES[family], options,
                                  id=f"{family}-{method}-{precision}-{attn}-ckpt_{options['gradient_checkpointing']}-b{batch}s{seq}"))
    return cases


@pytest.mark.parametrize("arch, options", _cases())
def test_each_family_is_estimated_term_by_term(arch, options):
    errors = relative_errors(arch, options)
    assert {t: errors[t] for t in STATE_TERMS if errors[t]} == {}, "state terms must be exact"
    assert errors["activations"] <= 0.10
    assert errors["logits"] <= 0.10


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts_match_the_model_transformers_builds(family):
    from labkit.memory.build import build_model
    from labkit.memory.setup import make_setup

    arch = FAMILIES[family]
    model = build_model(arch, make_setup("full", precision="fp32", attn_implementation="eager"))
    assert arch.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config, expected", [
    (Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, vocab_size=300), dict(qk_norm="head", head_dim=32)),
    (Olmo2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=300), dict(qk_norm="full", norm_position="post")),
    (Phi3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=300, pad_token_id=0),
     dict(fused_projections=True)),
    (MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=300, num_local_experts=4, num_experts_per_tok=2), dict(num_experts=4, experts_per_token=2)),
    (Qwen3MoeConfig(hidden_size=64, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=300, num_experts=6, num_experts_per_tok=3),
     dict(num_experts=6, experts_per_token=3, intermediate_size=32, qk_norm="head")),
    (Gemma2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, vocab_size=300, pad_token_id=0),
     dict(norm_position="sandwich", rmsnorm="gemma", attn_softcap=True, logit_softcap=True, tie_word_embeddings=True)),
    (Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=32, vocab_size=300, sliding_window=16, pad_token_id=0),
     dict(norm_position="sandwich", qk_norm="head", sliding_window=16, logit_softcap=False, head_dim=32)),
])
def test_a_config_of_each_family_resolves_to_its_layout_and_parameter_count(config, expected, tmp_path):
    arch = resolve(config)
    assert {k: getattr(arch, k) for k in expected} == expected
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    assert resolve(tmp_path).num_parameters() == arch.num_parameters()
    torch.manual_seed(0)
    assert arch.num_parameters() == sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def test_moe_stores_every_expert_but_activates_only_the_routed_ones():
    arch = FAMILIES["mixtral"]
    dense = Architecture("dense", "mistral", 64, 96, 2, 4, 2, 16, 1000, False)
    experts = arch.expert_parameters()["experts.gate_up_proj"] + arch.expert_parameters()["experts.down_proj"]
    assert experts == arch.num_experts * 3 * 64 * 96
    assert arch.active_parameters() == arch.num_parameters() - 2 * (arch.num_experts - arch.experts_per_token) * 3 * 64 * 96
    options = dict(method="full", batch_size=2, seq_len=64, precision="bf16-mixed")
    moe, plain = estimate_memory(arch, **options).breakdown, estimate_memory(dense, **options).breakdown
    assert moe["optimizer_states"] > 3 * plain["optimizer_states"] / 2  # states for all 4 experts (plus router)
    assert moe["activations"] < 3 * plain["activations"]  # activations of top-2 experts only


def test_lora_targets_the_names_each_family_uses():
    phi3 = FAMILIES["phi3"]
    assert set(phi3.linear_shapes()) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    with pytest.raises(ValueError, match=r"none of target_modules \['q_proj', 'v_proj'\] is one of its linears"):
        estimate_memory(phi3, method="lora", target_modules=("q_proj", "v_proj"))
    assert estimate_memory(phi3, method="lora", target_modules=("qkv_proj",)).breakdown["trainable_weights"] > 0


@pytest.mark.parametrize("cfg, message", [
    (dict(model_type="qwen3_moe", mlp_only_layers=[0]), r"dense layers .* not supported"),
    (dict(model_type="gemma3"), r"model_type 'gemma3' is not supported"),  # the multimodal wrapper
])
def test_unsupported_layouts_are_refused(cfg, message, tmp_path):
    base = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=300, num_experts=4, num_experts_per_tok=2)
    (tmp_path / "config.json").write_text(json.dumps(base | cfg))
    with pytest.raises(ValueError, match=message):
        resolve(tmp_path)


def test_gemma2_refuses_sdpa_and_its_logit_soft_cap_keeps_one_more_vocabulary_wide_tensor():
    gemma2 = FAMILIES["gemma2"]
    with pytest.raises(ValueError, match=r"Gemma-2 soft-caps .* expected 'eager' or 'flash'"):
        estimate_memory(gemma2, method="lora", attn_implementation="sdpa")
    options = dict(method="lora", attn_implementation="eager", batch_size=2, seq_len=32, precision="bf16")
    capped = estimate_memory(gemma2, **options).breakdown["activations"]
    uncapped = estimate_memory(Architecture(**{**gemma2.__dict__, "logit_softcap": False}), **options).breakdown["activations"]
    assert capped - uncapped == 2 * 32 * gemma2.vocab_size * 2  # tanh's bf16 output, b x s x V


def test_sdpa_on_gemma3_keeps_sliding_masks_only_past_the_window():
    gemma3 = FAMILIES["gemma3_text"]  # window 8, five sliding layers of six
    wide = Architecture(**{**gemma3.__dict__, "sliding_window": 64})

    def act(arch, seq, attn="sdpa"):
        return estimate_memory(arch, method="lora", attn_implementation=attn, batch_size=1, seq_len=seq).breakdown["activations"]

    assert act(gemma3, 8) == act(wide, 8)  # within the window the masks are not kept
    assert act(gemma3, 16) - act(wide, 16) == 5 * 2 * 16**2  # past it: two boolean (1, 1, s, s) per sliding layer
    assert act(gemma3, 16, "eager") == act(wide, 16, "eager")


# Parameter counts the Hugging Face Hub reports (safetensors totals; Qwen3-0.6B as transformers counts its tied
# embedding, once), and for mixtures of experts the parameters one token uses.
PUBLISHED = {"Qwen3-0.6B": 596_049_920, "Qwen3-8B": 8_190_735_360, "Gemma-2-2B": 2_614_341_888,
             "Phi-3-mini-4k": 3_821_079_552, "OLMo-2-1124-7B": 7_298_617_344, "Mixtral-8x7B": 46_702_792_704,
             "Qwen3-30B-A3B": 30_532_122_624}


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_new_registry_entries_match_their_published_parameter_counts(name, count):
    assert resolve(name).num_parameters() == count


def test_moe_registry_entries_activate_what_their_names_say():
    assert resolve("Qwen3-30B-A3B").active_parameters() == 3_353_032_704  # "A3B"
    assert round(resolve("Mixtral-8x7B").active_parameters() / 1e9, 1) == 12.9  # Mixtral paper: 12.9B active


def test_without_an_attention_choice_each_family_gets_the_one_transformers_uses():
    from labkit.memory import estimate_memory, resolve

    assert resolve("Gemma-2-2B").default_attention == "eager" and resolve("Qwen3-8B").default_attention == "sdpa"
    assert estimate_memory("Gemma-2-2B", method="lora").breakdown == estimate_memory(
        "Gemma-2-2B", method="lora", attn_implementation="eager").breakdown
    with pytest.raises(ValueError, match="SDPA cannot"):
        estimate_memory("Gemma-2-2B", method="lora", attn_implementation="sdpa")
