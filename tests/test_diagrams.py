"""labkit.diagrams: every figure is drawn from the objects it shows, so it changes when they do."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from labkit import diagrams, ppo  # noqa: E402
from labkit.nf4 import dequantize_nf4, quantize_nf4  # noqa: E402


@pytest.mark.parametrize("d_in, d_out, r", [(64, 64, 8), (32, 96, 4), (16, 16, 1)])
def test_the_lora_boxes_have_the_matrices_shapes(d_in, d_out, r):
    fig = diagrams.lora_layer(d_in, d_out, r, lora_alpha=2 * r)
    boxes = {p.get_label(): (p.get_width(), p.get_height()) for p in fig.axes[0].patches}
    assert boxes == {"W": (d_in, d_out), "A": (d_in, r), "B": (r, d_out)}
    assert f"{r * (d_in + d_out):,} trainable" in fig.axes[0].get_title()


def test_a_lora_rank_above_the_layer_is_refused():
    with pytest.raises(ValueError, match="r <= min"):
        diagrams.lora_layer(8, 8, 16, lora_alpha=16)


def test_the_nf4_picture_shows_what_nf4_stores():
    torch.manual_seed(0)
    weight = torch.randn(8, 64) * 0.05
    fig = diagrams.nf4_blocks(weight, blocks=3)
    points, stored = fig.axes[0].lines[:2]
    codes, absmax = quantize_nf4(weight.reshape(-1, 64)[:3], blocksize=64)
    expected = dequantize_nf4(codes, absmax, torch.Size([192]), blocksize=64)
    assert torch.allclose(torch.tensor(points.get_ydata(), dtype=torch.float32), weight.reshape(-1)[:192])
    assert torch.allclose(torch.tensor(stored.get_ydata(), dtype=torch.float32), expected)
    with pytest.raises(ValueError, match="3 blocks of 64 need 192"):
        diagrams.nf4_blocks(torch.zeros(100), blocks=3)


def test_the_dora_magnitudes_are_the_row_norms_and_the_direction_has_unit_rows():
    torch.manual_seed(0)
    weight = torch.randn(20, 40)
    fig = diagrams.dora_decomposition(weight, rows=16, columns=32)
    bars = [b.get_width() for b in fig.axes[1].patches]
    assert torch.allclose(torch.tensor(bars, dtype=torch.float32), weight.norm(dim=1)[:16])
    direction = fig.axes[2].images[0].get_array()
    assert torch.allclose(torch.tensor(direction.data, dtype=torch.float32), (weight / weight.norm(dim=1, keepdim=True))[:16, :32])


def test_the_ppo_loop_names_labkit_ppos_functions():
    fig = diagrams.ppo_loop()
    texts = {t.get_text() for t in fig.axes[0].texts}
    nodes = {a for a, _, _ in diagrams.PPO_STEPS}
    assert nodes <= texts
    assert all(callable(getattr(ppo, n)) for n in nodes - {"prompts", "score"})
    assert {b for _, b, _ in diagrams.PPO_STEPS} == nodes  # a closed loop: every node is entered once
