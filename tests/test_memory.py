"""labkit.memory: estimates agree with measurement term by term; bad options are refused; the registry is right."""

import itertools
import json
import math

import pytest
from memory_checks import STATE_TERMS, relative_errors
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import labkit
from labkit.memory import (ARCHITECTURES, Architecture, MemoryReport, TrainingSetup, estimate_memory, measure_memory, resolve,
                           smallest_fit)
from labkit.memory.plan import GPU_COUNTS
from labkit.memory.states import nf4_bytes

TINY = Architecture("tiny-llama-gqa", "llama", 64, 160, 2, 4, 2, 16, 1000, True)
TINY_QWEN = Architecture("tiny-qwen2-untied", "qwen2", 64, 128, 2, 4, 1, 16, 800, False, attention_bias=True)
TINY_MHA = Architecture("tiny-mistral-mha", "mistral", 96, 200, 2, 6, 6, 16, 700, False)
MID = Architecture("mid-llama", "llama", 512, 1536, 3, 8, 4, 64, 4096, True)

SHAPES = [(1, 16), (2, 40), (3, 24), (2, 64)]  # (batch, seq_len), cycled through the cases
OPTIMIZERS = ["adamw_torch", "adamw_8bit", "sgd"]


def _cases():
    cases = []
    grid = itertools.product([TINY, TINY_QWEN, TINY_MHA], ["full", "lora", "dora", "qlora"],
                             ["fp32", "bf16", "bf16-mixed"], ["eager", "sdpa"], ["none", "full"])
    for n, (arch, method, precision, attn, ckpt) in enumerate(grid):
        batch, seq = SHAPES[n % len(SHAPES)]
        options = dict(method=method, precision=precision, attn_implementation=attn, gradient_checkpointing=ckpt,
                       batch_size=batch, seq_len=seq, r=4 + 4 * (n % 2), optimizer=OPTIMIZERS[n % 3])
        if method != "full" and n % 5 == 0:
            options["target_modules"] = ("q_proj", "v_proj")
        if method != "full" and n % 7 == 0:
            options["modules_to_save"] = ("lm_head",)
        cases.append(pytest.param(arch, options, id=f"{arch.name}-{method}-{precision}-{attn}-ckpt_{ckpt}-b{batch}s{seq}"))
    mid = [dict(method="full", precision="fp32", attn_implementation="eager", batch_size=2, seq_len=64),
           dict(method="full", precision="bf16-mixed", gradient_checkpointing="full", batch_size=2, seq_len=96, optimizer="adamw_8bit"),
           dict(method="lora", precision="bf16", batch_size=4, seq_len=32, r=16),
           dict(method="dora", precision="fp32", attn_implementation="eager", gradient_checkpointing="full", batch_size=1,
                seq_len=128, r=8),
           dict(method="qlora", precision="bf16", batch_size=2, seq_len=48, r=8, quantization="nf4"),
           dict(method="qlora", precision="bf16-mixed", attn_implementation="eager", gradient_checkpointing="full", batch_size=1,
                seq_len=64, optimizer="adamw_8bit")]
    for o in mid:
        name = f"mid-{o['method']}-{o['precision']}-{o.get('attn_implementation', 'sdpa')}-ckpt_{o.get('gradient_checkpointing', 'none')}"
        cases.append(pytest.param(MID, o, id=name, marks=pytest.mark.slow))  # seconds each on 2 cores
    return cases


@pytest.mark.parametrize("arch, options", _cases())
def test_estimate_matches_measurement_term_by_term(arch, options):
    errors = relative_errors(arch, options)
    assert {t: errors[t] for t in STATE_TERMS if errors[t]} == {}, "state terms must be exact"
    assert errors["activations"] <= 0.10
    assert errors["logits"] <= 0.10


def test_measured_terms_are_the_real_tensor_bytes():
    """Independent of labkit's bookkeeping: full fp32 AdamW keeps 4 B weights + 4 B grads + 8 B moments per parameter."""
    report = measure_memory(TINY, method="full", precision="fp32", optimizer="adamw_torch", device="cpu", batch_size=1, seq_len=8)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True))
    n = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    assert report.breakdown["weights"] == 4 * n
    assert report.breakdown["gradients"] == 4 * n
    assert report.breakdown["optimizer_states"] == 8 * n + 4 * tensors  # plus one fp32 step counter per tensor


def test_activations_grow_with_batch_and_shrink_with_checkpointing():
    def act(**kw):
        return estimate_memory("Llama-3.1-8B", method="full", **kw).breakdown["activations"]

    # linear in the batch up to rotary cos/sin, which are per sequence position, not per token
    assert act(batch_size=2, seq_len=512) == pytest.approx(2 * act(batch_size=1, seq_len=512), rel=1e-4)
    assert act(seq_len=1024, gradient_checkpointing="full") < act(seq_len=1024) / 10
    def eager_extra(s):  # eager minus sdpa: the s x s attention probabilities plus a few per-token tensors
        return act(seq_len=s, attn_implementation="eager") - act(seq_len=s)

    # the quadratic part: fp32 softmax plus its bf16 cast, 32 heads, 32 layers, batch 1 -> 32 * 32 * s^2 * (4 + 2)
    assert eager_extra(2048) - 2 * eager_extra(1024) == 2 * 32 * 32 * 1024**2 * 6


def test_logits_term_is_fp32_log_probabilities_for_every_token():
    arch = resolve("Llama-3.2-1B")
    report = estimate_memory(arch, method="lora", batch_size=4, seq_len=1024, precision="bf16")
    assert report.breakdown["logits"] == 4 * 1024 * arch.vocab_size * 4 + 4 * 1024 * 8 + 4
    fused = estimate_memory(arch, method="lora", batch_size=4, seq_len=1024, logits="fused").breakdown["logits"]
    assert fused == 4 * 1024 * (4 + 8 + arch.hidden_size * 2)  # log-sum-exp, target, the bf16 hidden state it recomputes from


def test_nf4_double_quant_costs_4_127_bits_per_weight():
    n = 4096 * 4096
    data, constants = nf4_bytes(n, double_quant=True)
    assert 8 * (data + constants) / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    data, constants = nf4_bytes(n, double_quant=False)
    assert 8 * (data + constants) / n == pytest.approx(4.5, abs=1e-3)


def test_qlora_weights_cost_4_127_bits_per_linear_weight_and_16_bits_for_the_rest():
    """Llama-2-70B from its published count: 4.127 bits/weight for the quantized linears (QLoRA §3), bf16 elsewhere."""
    published, vocab, hidden, layers = 68_976_648_192, 32000, 8192, 80
    unquantized = 2 * vocab * hidden + (2 * layers + 1) * hidden  # embeddings, LM head, RMSNorm weights
    expected = (published - unquantized) * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + unquantized * 2
    report = estimate_memory("Llama-2-70B", method="qlora", quantization="nf4-dq")
    assert report.breakdown["weights"] + report.breakdown["quant_constants"] == pytest.approx(expected, rel=1e-4)


# Published parameter counts (each model card / safetensors index on the Hugging Face Hub).
PUBLISHED = {"Llama-2-7B": 6_738_415_616, "Llama-2-13B": 13_015_864_320, "Llama-2-70B": 68_976_648_192,
             "Llama-3.2-1B": 1_235_814_400, "Llama-3.1-8B": 8_030_261_248, "Mistral-7B-v0.1": 7_241_732_096,
             "Qwen2.5-0.5B": 494_032_768, "Qwen2.5-7B": 7_615_616_512, "SmolLM2-135M": 134_515_008,
             "Gemma-2B": 2_506_172_416}


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_registry_parameter_counts_match_the_published_ones(name, count):
    assert resolve(name).num_parameters() == count


def test_registry_covers_the_families_the_chapter_needs():
    for prefix in ("Llama-2-", "Llama-3", "Mistral-7B", "Qwen2.5-0.5B", "Qwen2.5-72B", "SmolLM2", "Gemma"):
        assert any(n.startswith(prefix) for n in ARCHITECTURES), prefix


def test_resolve_reads_a_config_json_a_config_object_and_the_shipped_model(tmp_path):
    shipped = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(labkit.paths.BASE_DIR))
    assert resolve(labkit.paths.BASE_DIR / "config.json").num_parameters() == sum(p.numel() for p in shipped.parameters())
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=100)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    real = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    assert resolve(cfg).num_parameters() == real
    assert resolve(tmp_path).num_parameters() == real


def test_report_total_and_table_agree():
    report = estimate_memory("Qwen2.5-0.5B", method="qlora")
    assert isinstance(report.total_bytes, int) and report.total_bytes == sum(report.breakdown.values())
    table = report.table()
    assert table.loc["total", "bytes"] == report.total_bytes
    assert list(table.index[:-2]) == list(report.breakdown)
    assert "total" in str(report) and "<table" in report._repr_html_()


@pytest.mark.parametrize("options, message", [
    (dict(method="fulll"), r"method 'fulll'.*expected one of 'full', 'lora'"),
    (dict(method="lora", precision="bf32"), r"precision 'bf32'"),
    (dict(method="lora", quantization="nf3"), r"quantization 'nf3'"),
    (dict(method="lora", optimizer="adam"), r"optimizer 'adam'.*'adamw_torch'"),
    (dict(method="lora", gradient_checkpointing=True), r"gradient_checkpointing True.*'none', 'full'"),
    (dict(method="lora", attn_implementation="flash_attention_2"), r"attn_implementation 'flash_attention_2'"),
    (dict(method="lora", logits="chunked"), r"logits 'chunked'"),
    (dict(method="lora", batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(method="lora", seq_len="512"), r"seq_len must be an integer >= 1, got '512'"),
    (dict(method="lora", r=0), r"r must be an integer >= 1, got 0"),
    (dict(method="lora", target_modules=("q_proj", "qv_proj")), r"target module 'qv_proj'"),
    (dict(method="lora", target_modules="all"), r"target_modules 'all'.*'all-linear'"),
    (dict(method="lora", target_modules=()), r"target_modules is empty"),
    (dict(method="lora", modules_to_save=("lm_heads",)), r"modules_to_save entry 'lm_heads'"),
    (dict(method="full", modules_to_save=("lm_head",)), r"modules_to_save.*method 'full'"),
    (dict(method="full", quantization="nf4"), r"method 'full'.*cannot be quantized"),
    (dict(method="qlora", quantization="int8"), r"quantization must be 'nf4' or 'nf4-dq', got 'int8'"),
    (dict(method="lora", quantization="nf4"), r"is method 'qlora'"),
    (dict(method="lora", micro_batch=4), r"unknown option\(s\) \['micro_batch'\]"),
    (dict(method="lora", device="tpu"), r"device 'tpu'"),
])
def test_estimate_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory("SmolLM2-135M", **options)


@pytest.mark.parametrize("model, message", [
    ("Llama-2-7b", r"neither a registry name nor a config.json path; registry names are Llama-2-7B"),
    (42, r"got int"),
    (LlamaConfig(num_attention_heads=6, num_key_value_heads=4, hidden_size=48), r"num_heads 6 is not divisible by num_kv_heads 4"),
])
def test_estimate_rejects_bad_models(model, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(model, method="lora")


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported; expected one of llama"):
        estimate_memory(tmp_path, method="full")


@pytest.mark.parametrize("model, options, message", [
    (TINY, dict(attn_implementation="flash"), r"'flash' needs CUDA"),
    (TINY, dict(optimizer="paged_adamw_32bit"), r"'paged_adamw_32bit' pages"),
    (TINY, dict(logits="fused"), r"logits must be 'full', got 'fused'"),
    (TINY, dict(quantization="int8"), r"got 'int8'"),
    ("Gemma-2B", dict(), r"Gemma-2B is 'gemma'"),
    (TINY, dict(steps=0), r"steps must be an integer >= 1, got 0"),
    (TINY, dict(device="mps"), r"device 'mps'"),
])
def test_measure_rejects_what_it_cannot_run(model, options, message):
    with pytest.raises(ValueError, match=message):
        measure_memory(model, method="lora", **{"device": "cpu", **options})


def test_setup_and_report_validate_directly():
    assert TrainingSetup(method="qlora").quantization == "nf4-dq"
    with pytest.raises(ValueError, match=r"unknown term\(s\) \['activation'\]"):
        MemoryReport(kind="estimate", model="x", breakdown={"activation": 1})
    report = estimate_memory("Llama-2-7B", method="lora")
    assert math.isclose(report.total_gib * 2**30, report.total_bytes)




@pytest.mark.parametrize("world_size", [2, 8, 64])
@pytest.mark.parametrize("sharding, split", [
    ("none", set()),
    ("zero1", {"optimizer_states", "masters"}),
    ("zero2", {"optimizer_states", "masters", "gradients"}),
    ("zero3", {"optimizer_states", "masters", "gradients", "weights"}),
])
def test_each_zero_stage_divides_the_terms_the_paper_says(world_size, sharding, split):
    """Rajbhandari et al. 2020, fig. 1: stage 1 partitions the optimizer states (with the fp32 masters), stage 2
    also the gradients, stage 3 also the parameters; every other term stays whole on every device."""
    options = dict(method="full", precision="bf16-mixed", batch_size=1, seq_len=64)
    whole = estimate_memory("Llama-3.2-1B", **options).breakdown
    per_device = estimate_memory("Llama-3.2-1B", world_size=world_size, sharding=sharding, **options).breakdown
    for term in ("weights", "gradients", "optimizer_states"):
        expected = -(-whole[term] // world_size) if term in split else whole[term]
        assert per_device[term] == expected, term
    masters = whole["trainable_weights"]  # full fine-tuning: trainable_weights are the fp32 masters
    assert per_device["trainable_weights"] == (-(-masters // world_size) if "masters" in split else masters)
    assert per_device["activations"] == whole["activations"] and per_device["logits"] == whole["logits"]


def test_zero3_per_device_bytes_follow_the_papers_formula_with_labkits_widths():
    # Paper: (2 + 2 + K) * psi / N with fp16 gradients and K = 12; labkit keeps fp32 gradients (4 bytes), so 2+4+4+8.
    arch = resolve("Llama-3.1-8B")
    psi = arch.num_parameters()
    states = {t: b for t, b in estimate_memory(arch, method="full", precision="bf16-mixed", world_size=64,
                                              sharding="zero3").breakdown.items()
              if t in ("weights", "trainable_weights", "gradients", "optimizer_states")}
    assert sum(states.values()) == pytest.approx((2 + 4 + 4 + 8) * psi / 64, rel=1e-3)


def test_offloading_the_optimizer_leaves_no_optimizer_state_or_master_on_the_device():
    report = estimate_memory("Llama-3.1-8B", method="full", world_size=8, sharding="zero3", offload_optimizer=True)
    assert report.breakdown["optimizer_states"] == 0 and report.breakdown["trainable_weights"] == 0
    assert report.breakdown["weights"] > 0 and report.breakdown["gradients"] > 0


def test_zero3_adds_the_gathered_layers_to_the_transient_peak():
    options = dict(method="full", batch_size=1, seq_len=64, world_size=8)
    assert (estimate_memory("Llama-3.1-8B", sharding="zero3", **options).breakdown["transient"]
            > estimate_memory("Llama-3.1-8B", sharding="zero2", **options).breakdown["transient"])


@pytest.mark.parametrize("options, message", [
    (dict(sharding="zero4"), "sharding 'zero4' is not supported"),
    (dict(world_size=0), "world_size must be an integer >= 1"),
    (dict(offload_optimizer="yes"), "offload_optimizer must be True or False"),
])
def test_sharding_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory("Llama-3.2-1B", method="full", **options)


def test_measure_refuses_a_sharded_setup():
    with pytest.raises(ValueError, match="measure runs one process on one device"):
        measure_memory(labkit.paths.BASE_DIR / "config.json", method="full", world_size=2, sharding="zero3", device="cpu")


@pytest.mark.parametrize("model, method, gpu_gib", [("Llama-3.1-8B", "full", 24), ("Llama-3.1-70B", "lora", 80),
                                                   ("Llama-3.1-8B", "qlora", 24)])
def test_a_plan_is_the_fewest_gpus_that_fit_and_one_fewer_does_not(model, method, gpu_gib):
    options = dict(batch_size=1, seq_len=2048, gradient_checkpointing="full")
    plan = smallest_fit(model, method=method, gpu_gib=gpu_gib, **options)
    assert plan["GiB per GPU"] <= gpu_gib
    smaller = [c for c in GPU_COUNTS if c < plan["gpus"]]
    if smaller:
        fewer = smallest_fit(model, method=method, gpu_gib=gpu_gib, counts=tuple(smaller), **options)
        assert fewer["gpus"] is None


def test_a_plan_says_when_nothing_fits():
    plan = smallest_fit("Llama-3.1-70B", method="full", gpu_gib=8, counts=(1, 2), seq_len=2048)
    assert plan["gpus"] is None and "none fits" in plan["strategy"]
    with pytest.raises(ValueError, match="gpu_gib must be > 0"):
        smallest_fit("Llama-3.1-8B", method="full", gpu_gib=0)
