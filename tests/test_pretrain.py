import pytest
import torch

from labkit.pretrain import PretrainConfig, build_model, lr_at, pretrain, stream_loss, token_stream


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(hidden_size=100, num_heads=3), "not divisible by num_heads"),
        (dict(num_heads=4, num_kv_heads=3), "not divisible by num_kv_heads"),
        (dict(seq_len=4096), "exceeds max_position_embeddings"),
        (dict(steps=0, warmup_steps=0), "steps must be >= 1"),
        (dict(steps=10, warmup_steps=11), "warmup_steps must be in"),
    ],
)
def test_bad_configs_are_rejected(kwargs, error):
    with pytest.raises(ValueError, match=error):
        PretrainConfig(**kwargs)


@pytest.mark.slow
def test_a_tiny_model_learns_a_repeated_text(tokenizer):
    ids = token_stream(["the quick brown fox jumps over the lazy dog. " * 40], tokenizer)
    assert ids[-1] == tokenizer.eos_token_id
    cfg = PretrainConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                         seq_len=32, batch_size=4, steps=60, warmup_steps=5, lr=1e-2, eval_every=20, seed=1)
    model = build_model(cfg, tokenizer)
    before = stream_loss(model, ids, cfg.seq_len)
    log = pretrain(model, ids, cfg, eval_ids=ids, progress=False)
    assert before > 7.0  # ~ln(4096) at initialisation
    assert log.eval_loss[-1] < 2.0 and log.eval_loss[-1] < log.eval_loss[0]
    assert log.tokens == 60 * 4 * 32 and len(log.train_loss) == 60
    again = build_model(cfg, tokenizer)
    assert pretrain(again, ids, cfg, progress=False).train_loss == log.train_loss  # seeded: identical run


def test_pretrain_refuses_a_stream_shorter_than_a_window(tokenizer):
    cfg = PretrainConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, seq_len=64,
                         steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match="need more than seq_len"):
        pretrain(build_model(cfg, tokenizer), torch.arange(10), cfg, progress=False)
