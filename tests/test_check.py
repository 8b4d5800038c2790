"""labkit.check: each check fires on its planted pitfall and stays silent once it is fixed."""

import copy
from types import SimpleNamespace

import pytest
import torch

from labkit.check import (LEVERS, Finding, PitfallMonitor, chat_template_match, eos_in_labels, fits_memory,
                          forgetting_above, merge_quantized, overfitting, packing_isolation, padding_side, precision,
                          preflight)
from labkit.check.template import first_difference
from labkit.data.masks import IGNORE_INDEX, tokenize_example
from labkit.data.packing import collate_packed

QA = {"prompt": "Question: what is 2 + 3?\nAnswer:", "completion": " 5"}
CHAT = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]}


def names(findings):
    return [f.check for f in findings]


@pytest.mark.parametrize("severity, error", [("fatal", "severity 'fatal'"), ("error", None)])
def test_finding_validates_its_severity(severity, error):
    if error:
        with pytest.raises(ValueError, match=error):
            Finding("x", severity, "what", "fix")
    else:
        assert str(Finding("x", severity, "what.", "fix")) == "error: x: what. Fix: fix"


# -- 1. eos_in_labels ---------------------------------------------------------------------------------------------

def _rows(tokenizer, plant):
    rows = [tokenize_example(QA, tokenizer, "completion"), tokenize_example(CHAT, tokenizer, "chat")]
    if plant == "missing":
        end = max(i for i, label in enumerate(rows[1]["labels"]) if label != IGNORE_INDEX)
        rows[1] = {k: v[:end] for k, v in rows[1].items()}  # the reply without its <|im_end|>
    elif plant == "masked":
        rows[0]["labels"][-1] = IGNORE_INDEX
    return rows


@pytest.mark.parametrize("plant, reason", [(None, None), ("missing", "no end token follows"), ("masked", "with label -100")])
def test_eos_in_labels_on_tokenized_rows(tokenizer, plant, reason):
    found = eos_in_labels(_rows(tokenizer, plant), tokenizer)
    assert names(found) == ([] if plant is None else ["eos_in_labels"])
    if plant:
        assert reason in found[0].message and "1 of 2 examples" in found[0].message


@pytest.mark.parametrize("plant", [None, "missing"])
def test_eos_in_labels_checks_every_example_of_a_packed_batch(tokenizer, plant):
    rows = _rows(tokenizer, plant)
    packed = collate_packed(rows[::-1], tokenizer.pad_token_id)  # the planted example first, where only a split finds it
    found = eos_in_labels(packed, tokenizer)
    assert names(found) == ([] if plant is None else ["eos_in_labels"])
    if plant:
        assert "example 0:" in found[0].message and "1 of 2 examples" in found[0].message


def test_eos_in_labels_ignores_the_newline_after_a_labelled_end_of_turn(tokenizer):
    row = tokenize_example(CHAT, tokenizer, "chat", mask_prompt=False)  # every token labelled, "\n" last
    assert tokenizer.decode(row["labels"][-2:]) == "<|im_end|>\n"
    assert eos_in_labels([row], tokenizer) == []


@pytest.mark.parametrize("pad_is_eos", [True, False])
def test_eos_in_labels_finds_the_eos_label_masked_as_padding(tokenizer, pad_is_eos):
    from transformers import DataCollatorForLanguageModeling

    tok = copy.deepcopy(tokenizer)
    if pad_is_eos:
        tok.pad_token = tok.eos_token  # the usual fix for a tokenizer without a pad token
    rows = [{"input_ids": tokenize_example(r, tok, "completion")["input_ids"]}
            for r in (QA, {"prompt": "Question: name a colour.\nAnswer:", "completion": " a deep shade of blue"})]
    batch = DataCollatorForLanguageModeling(tok, mlm=False)(rows)  # masks padding by token id
    found = eos_in_labels(batch, tok)
    assert names(found) == (["eos_in_labels"] if pad_is_eos else [])
    if pad_is_eos:
        assert "pad_token_id == 0" in found[0].message and "2 of 2 examples" in found[0].message


# -- 2. chat_template_match ----------------------------------------------------------------------------------------

def test_chat_template_match(tokenizer):
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert chat_template_match([CHAT, {**CHAT, "text": rendered}], tokenizer) == []
    subtle = rendered.replace("<|im_start|>user\n", "<|im_start|>user \n")
    for planted in ({**CHAT, "text": subtle}, QA):
        (found,) = chat_template_match([CHAT, planted], tokenizer)
        prompt = tokenizer.apply_chat_template(CHAT["messages"][:1], tokenize=False, add_generation_prompt=True)
        text = planted.get("text") or QA["prompt"] + QA["completion"]
        assert found.check == "chat_template_match" and "record 1:" in found.message
        assert f"at character {first_difference(text, prompt)}:" in found.message and "1 of 2 records" in found.message
    assert first_difference(subtle, rendered) == len("<|im_start|>user")


# -- 3. padding_side -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side, fires", [("right", True), ("left", False)])
def test_padding_side(tokenizer, side, fires):
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    assert names(padding_side(tok)) == (["padding_side"] if fires else [])
    batch = tok(["What is 2 + 3?", "Hi"], return_tensors="pt", padding=True)
    found = padding_side(batch=batch)
    assert [(f.check, f.severity) for f in found] == ([("padding_side", "error")] if fires else [])
    if fires:
        assert "row 1" in found[0].message
    assert padding_side(tok, model=SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=True))) == []


# -- 4. packing_isolation: the check agrees with what the model computes --------------------------------------------

def _packed(tokenizer):
    rows = [tokenize_example(QA, tokenizer, "completion"), tokenize_example(CHAT, tokenizer, "chat")]
    return rows, collate_packed(rows, tokenizer.pad_token_id)


def _variants(batch, lengths):
    T = batch["input_ids"].shape[1]
    ex = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    block = (ex[:, None] == ex[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    drop = {k: v for k, v in batch.items() if k != "position_ids"}
    return {
        "padding-free": (batch, {}),
        "with a 2-D attention_mask": (batch | {"attention_mask": torch.ones_like(batch["input_ids"])}, {}),
        "without position_ids": (drop, {}),
        "position_ids that never restart": (batch | {"position_ids": torch.arange(T)[None]}, {}),
        "with a KV cache": (batch, {"use_cache": True}),
        "a 4-D block mask": (drop | {"attention_mask": block[None, None]}, {}),
        "a 4-D causal mask": (drop | {"attention_mask": torch.ones(T, T, dtype=torch.bool).tril()[None, None]}, {}),
    }


ISOLATED = {"padding-free", "a 4-D block mask"}


@pytest.mark.parametrize("variant", ["padding-free", "with a 2-D attention_mask", "without position_ids",
                                     "position_ids that never restart", "with a KV cache", "a 4-D block mask",
                                     "a 4-D causal mask"])
def test_packing_isolation_fires_exactly_when_attention_crosses(base, variant):
    model, tokenizer = base
    rows, batch = _packed(tokenizer)
    lengths = [len(r["input_ids"]) for r in rows]
    planted, call = _variants(batch, lengths)[variant]
    found = packing_isolation(planted, seq_lengths=lengths, use_cache=call.get("use_cache", False))
    assert names(found) == ([] if variant in ISOLATED else ["packing_isolation"])
    with torch.no_grad():  # the truth: does the second example's output depend on the first?
        alone = model(input_ids=torch.tensor([rows[1]["input_ids"]]), use_cache=False).logits[0]
        packed = model(**{k: v for k, v in planted.items() if k != "labels"}, use_cache=call.get("use_cache", False)).logits[0]
    leaked = (packed[lengths[0]:] - alone).abs().max().item() > 1e-4
    assert leaked == bool(found)


def test_packing_isolation_reads_boundaries_from_position_ids(tokenizer):
    _, batch = _packed(tokenizer)
    assert packing_isolation(batch) == []
    assert names(packing_isolation(batch | {"attention_mask": torch.ones_like(batch["input_ids"])})) == ["packing_isolation"]
    single = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"])}
    assert packing_isolation(single) == []  # no restarts, no lengths: one example per row


@pytest.mark.parametrize("shift, fires", [(0, False), (1, True)])
def test_packing_isolation_with_flash_varlen_boundaries(tokenizer, shift, fires):
    rows, batch = _packed(tokenizer)
    lengths = [len(r["input_ids"]) for r in rows]
    cu = torch.tensor([0, lengths[0] + shift, sum(lengths)], dtype=torch.int32)
    found = packing_isolation(batch | {"cu_seq_lens_q": cu}, attn_implementation="flash_attention_2")
    assert names(found) == (["packing_isolation"] if fires else [])


@pytest.mark.parametrize("call, error", [
    (lambda tok: eos_in_labels([{"input_ids": [1, 2], "labels": [1]}], tok), "example 0: 2 input_ids but 1 labels"),
    (lambda tok: eos_in_labels([{"input_ids": [1, 2]}], tok), "example 0: needs 'input_ids' and 'labels'"),
    (lambda tok: packing_isolation({"input_ids": torch.zeros(2, 4, dtype=torch.long)}, seq_lengths=[[2, 2]]),
     "seq_lengths has 1 rows for a batch of 2"),
    (lambda tok: overfitting(CURVE, patience=0), "patience must be >= 1"),
    (lambda tok: PitfallMonitor(), "PitfallMonitor watches nothing"),
    (lambda tok: fits_memory("Qwen2.5-0.5B", gpu_gib=0), "gpu_gib must be > 0"),
])
def test_errors_say_what_and_where(tokenizer, call, error):
    with pytest.raises(ValueError, match=error):
        call(tokenizer)


# -- 5. fits_memory ------------------------------------------------------------------------------------------------

SETUP = dict(method="full", batch_size=16, seq_len=1024, precision="bf16-mixed")


def test_fits_memory_names_the_cheapest_single_lever():
    from labkit.check.memory import _gib, _with

    assert fits_memory("Qwen2.5-0.5B", gpu_gib=1000, **SETUP) == []
    needed = _gib("Qwen2.5-0.5B", "full", {k: v for k, v in SETUP.items() if k != "method"})
    options = {k: v for k, v in SETUP.items() if k != "method"}
    singles = [(name, _gib("Qwen2.5-0.5B", *_with("full", options, changes))) for name, changes, _ in LEVERS]
    gpu = sorted(g for _, g in singles)[1] + 0.01  # two levers fit alone: the check must name the cheaper one
    (found,) = fits_memory("Qwen2.5-0.5B", gpu_gib=gpu, **SETUP)
    first_fit = next(name for name, g in singles if g <= gpu)
    assert found.check == "fits_memory" and f"{needed:.1f} GiB" in found.message
    assert found.fix.startswith(first_fit)


@pytest.mark.parametrize("gpu_gib, expect", [(6, " + "), (1, "GPUs with"), (0.4, "a larger GPU")])
def test_fits_memory_combines_levers_then_adds_gpus(gpu_gib, expect):
    (found,) = fits_memory("Qwen2.5-0.5B", gpu_gib=gpu_gib, **SETUP)
    assert expect in found.fix


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_an_adapter_method_gets_the_levers_that_keep_it(method):
    from labkit.check import cheapest_fit

    options = {k: v for k, v in SETUP.items() if k != "method"}
    alone = cheapest_fit("Qwen2.5-0.5B", gpu_gib=1000, method=method, **options)
    assert alone["levers"] == [] and alone["gpus"] == 1
    fit = cheapest_fit("Qwen2.5-0.5B", gpu_gib=alone["GiB"] / 2, method=method, **options)
    assert fit["method"] == method and fit["levers"] and fit["GiB"] <= alone["GiB"] / 2
    assert not any("LoRA" in lever or "QLoRA" in lever for lever in fit["levers"])


# -- 6. precision --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, flags, expected", [
    ("fp32", set(), []),
    ("bf16-mixed", set(), [("precision", "warning")]),  # emulated on this CPU
    ("bf16-mixed", {"amx_bf16"}, []),
    ("fp16-mixed", {"amx_bf16"}, [("precision", "warning")]),  # bf16 is there: no loss scaling needed
    ("fp16-mixed", set(), []),
    ("fp16", set(), [("precision", "error")]),  # no loss scaling, no fp32 masters
    (SimpleNamespace(bf16=False, fp16=True, use_cpu=True), {"avx512_bf16"}, [("precision", "warning")]),
    (SimpleNamespace(bf16=False, fp16=False, use_cpu=True), {"avx512_bf16"}, []),
])
def test_precision(monkeypatch, config, flags, expected):
    monkeypatch.setattr("labkit.hardware._cpu_flags", lambda: flags)
    assert [(f.check, f.severity) for f in precision(config, device="cpu")] == expected


@pytest.mark.parametrize("dtype, expected", [(torch.float32, []), (torch.bfloat16, ["warning"]), (torch.float16, ["error"])])
def test_precision_of_the_trained_weights(monkeypatch, dtype, expected):
    monkeypatch.setattr("labkit.hardware._cpu_flags", lambda: set())
    model = torch.nn.Linear(4, 4).to(dtype)
    assert [f.severity for f in precision(None, model)] == expected
    model.requires_grad_(False)  # frozen 16-bit weights are not trained
    assert precision(None, model) == []


# -- 7. merge_quantized --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantized, adapter, fires", [(True, True, True), (False, True, False), (True, False, False)])
def test_merge_quantized(quantized, adapter, fires):
    found = merge_quantized(_tiny_lora(quantized, adapter))
    assert names(found) == (["merge_quantized"] if fires else [])
    if fires:
        assert "q_proj.base_layer" in found[0].message and "Linear4bit" in found[0].message


# -- 8. monitors ---------------------------------------------------------------------------------------------------

CURVE = [(10, 3.0), (20, 2.5), (30, 2.6), (40, 2.7), (50, 2.8)]


@pytest.mark.parametrize("curve, patience, min_delta, best", [
    (CURVE, 3, 0.0, 20), (CURVE, 4, 0.0, None), (CURVE[:4], 3, 0.0, None),
    ([(10, 3.0), (20, 2.99), (30, 2.98)], 2, 0.05, 10),  # falling, but by less than min_delta
    ([(10, 3.0), (20, 2.5), (30, 2.4)], 1, 0.0, None),
])
def test_overfitting(curve, patience, min_delta, best):
    found = overfitting(curve, patience=patience, min_delta=min_delta)
    assert names(found) == ([] if best is None else ["overfitting"])
    if best is not None:
        assert f"at step {best}," in found[0].message and f"step-{best} weights" in found[0].fix


@pytest.mark.parametrize("tuned, fires", [(2.3, True), (2.04, False), (1.9, False)])
def test_forgetting_above(tuned, fires):
    assert names(forgetting_above(tuned, 2.0, threshold=0.05)) == (["forgetting"] if fires else [])


def test_pitfall_monitor_stops_at_the_first_finding():
    from transformers import TrainerControl, TrainerState

    heldout = iter([2.0, 2.01, 2.02, 2.5])
    monitor = PitfallMonitor(patience=2, heldout=lambda m: next(heldout), base_loss=2.0, threshold=0.1)
    state, control, model = TrainerState(), TrainerControl(), torch.nn.Linear(2, 2).train()
    stopped_at = None
    for step, loss in [(10, 3.0), (20, 2.5), (30, 2.6), (40, 2.7)]:
        state.global_step = step
        monitor.on_evaluate(None, state, control, metrics={"eval_loss": loss}, model=model)
        if control.should_training_stop and stopped_at is None:
            stopped_at = step
    assert stopped_at == 40 and model.training
    assert names(monitor.findings) == ["overfitting", "forgetting"]
    assert monitor.heldout_curve[-1] == (40, 2.5)


# -- preflight: one planted pitfall at a time, in an otherwise clean run ----------------------------------------

CONFIG = SimpleNamespace(bf16=False, fp16=False, use_cpu=True, per_device_train_batch_size=4, max_length=256,
                         gradient_checkpointing=False, optim="adamw_torch")


def _tiny_lora(quantized: bool, adapter: bool = True):
    bnb = pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32) if quantized else torch.nn.Linear(16, 16)
    model = torch.nn.ModuleDict({"q_proj": layer})
    return peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])) if adapter else model


def _clean(base) -> dict:
    model, tokenizer = base
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "left"
    _, packed = _packed(tok)
    return dict(model=model, tokenizer=tok, train=[tokenize_example(QA, tok, "completion"), tokenize_example(CHAT, tok, "chat"), CHAT],
                config=CONFIG, gpu_gib=80, batch=packed,
                generation_batch=tok(["What is 2 + 3?", "Hi"], return_tensors="pt", padding=True))


def _pad_is_eos(kw):
    from transformers import DataCollatorForLanguageModeling

    tok = copy.deepcopy(kw["tokenizer"])
    tok.pad_token = tok.eos_token
    rows = [{"input_ids": r["input_ids"]} for r in kw["train"][:2]]
    return kw | dict(tokenizer=tok, train=None, batch=DataCollatorForLanguageModeling(tok, mlm=False)(rows))


def _right(kw):
    tok = copy.deepcopy(kw["tokenizer"])
    tok.padding_side = "right"
    return kw | dict(tokenizer=tok, generation_batch=None)


PLANTED = {  # the pitfall -> (how it is planted, the check that must name it)
    "a reply without its end token": (lambda kw: kw | {"train": _rows(kw["tokenizer"], "missing")}, "eos_in_labels"),
    "pad_token = eos_token, padding masked by id": (_pad_is_eos, "eos_in_labels"),
    "trained on other framing than the chat template": (lambda kw: kw | {"train": kw["train"] + [QA]}, "chat_template_match"),
    "tokenizer pads right for generation": (_right, "padding_side"),
    "a right-padded generation batch": (lambda kw: kw | {"generation_batch": _right(kw)["tokenizer"](
        ["What is 2 + 3?", "Hi"], return_tensors="pt", padding=True)}, "padding_side"),
    "packed rows with an attention_mask": (lambda kw: kw | {"batch": kw["batch"] | {
        "attention_mask": torch.ones_like(kw["batch"]["input_ids"])}}, "packing_isolation"),
    "a step bigger than the GPU": (lambda kw: kw | {"gpu_gib": 0.8, "memory_options": {"batch_size": 64}}, "fits_memory"),
    "fp16 where bf16 is native": (lambda kw: kw | {"config": SimpleNamespace(**{**vars(CONFIG), "fp16": True}),
                                                  "flags": {"avx512_bf16"}}, "precision"),
    "a LoRA adapter over a 4-bit base": (lambda kw: kw | {"model": _tiny_lora(True), "gpu_gib": None}, "merge_quantized"),
}


@pytest.mark.parametrize("pitfall", [None, *PLANTED])
def test_preflight_names_exactly_the_planted_pitfall(base, monkeypatch, pitfall):
    kwargs = _clean(base)
    plant, expected = PLANTED[pitfall] if pitfall else (lambda kw: kw, None)
    kwargs = plant(kwargs)
    flags = kwargs.pop("flags", set())
    monkeypatch.setattr("labkit.hardware._cpu_flags", lambda: flags)
    found = preflight(**kwargs)
    assert names(found) == ([expected] if expected else []), [str(f) for f in found]


def test_preflight_with_a_clean_lora_model(tokenizer):
    assert preflight(_tiny_lora(False), None) == []
