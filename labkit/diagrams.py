"""Mechanism diagrams drawn from the objects they show: a LoRA layer's shapes, NF4's blocks, DoRA's split, PPO's loop."""

from __future__ import annotations

import torch

BOX = dict(boxstyle="round,pad=0.4", linewidth=1)


def _figure(width: float, height: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    plt.close(fig)  # returned, not shown: the caller displays it
    return fig, ax


def lora_layer(d_in: int, d_out: int, r: int, lora_alpha: float):
    """A linear layer with LoRA: the frozen ``W`` (d_out x d_in) beside ``A`` (r x d_in) and ``B`` (d_out x r), drawn to
    scale (one unit per feature), the path ``h = W x + (alpha / r) B A x``. Returns the figure."""
    from matplotlib.patches import Rectangle

    if min(d_in, d_out, r) < 1 or r > min(d_in, d_out):
        raise ValueError(f"expected 1 <= r <= min(d_in, d_out); got d_in={d_in}, d_out={d_out}, r={r}")
    gap = max(d_in, d_out) * 0.4
    fig, ax = _figure(8, 4)
    # W: width d_in, height d_out; A: width d_in, height r; B: width r, height d_out
    shapes = {"W": (0, 0, d_in, d_out, "0.8", f"W (frozen)\n{d_out} x {d_in}"),
              "A": (d_in + gap, d_out - r, d_in, r, "C0", f"A: {r} x {d_in}"),
              "B": (2 * d_in + 2 * gap, 0, r, d_out, "C1", f"B: {d_out} x {r}\n(starts at 0)")}
    for name, (x, y, w, h, color, label) in shapes.items():
        ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", label=name, alpha=0.8))
        ax.annotate(label, (x + w / 2, y + h + gap * 0.15), ha="center", va="bottom", fontsize=9)
    ax.annotate("", xy=(2 * d_in + 2 * gap, d_out - r / 2), xytext=(2 * d_in + gap, d_out - r / 2),
                arrowprops=dict(arrowstyle="->"))
    trainable, frozen = r * (d_in + d_out), d_in * d_out
    ax.set_title(f"h = W x + ({lora_alpha:g}/{r}) B A x: {trainable:,} trainable numbers beside {frozen:,} frozen "
                 f"({trainable / frozen:.1%})", fontsize=10)
    ax.set_xlim(-gap * 0.2, 2 * d_in + 2 * gap + r + gap * 0.2)
    ax.set_ylim(-gap * 0.2, d_out + gap * 0.8)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig


def nf4_blocks(weight: torch.Tensor, *, blocksize: int = 64, blocks: int = 3):
    """The first ``blocks`` blocks of ``weight`` (flattened): each block's values, its absmax band and what NF4 stores
    for them (``labkit.nf4``: code value x block absmax). Returns the figure."""
    from labkit.nf4 import dequantize_nf4, quantize_nf4

    values = weight.detach().float().cpu().reshape(-1)[: blocksize * blocks]
    if values.numel() < blocksize * blocks:
        raise ValueError(f"weight has {values.numel()} values; {blocks} blocks of {blocksize} need {blocksize * blocks}")
    codes, absmax = quantize_nf4(values.view(blocks, blocksize), blocksize=blocksize)
    stored = dequantize_nf4(codes, absmax, values.shape, blocksize=blocksize).reshape(-1)
    fig, ax = _figure(10, 3.2)
    positions = torch.arange(values.numel())
    ax.plot(positions, values, ".", ms=3, color="C0", label="weight")
    ax.step(positions, stored, where="mid", color="C3", lw=0.9, label="stored: NF4 code x block absmax")
    for b, scale in enumerate(absmax.tolist()):
        start = b * blocksize
        ax.fill_between([start, start + blocksize - 1], -scale, scale, color="0.9", zorder=0)
        ax.annotate(f"block {b}: absmax {scale:.3g}", (start + blocksize / 2, scale), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="weight index", ylabel="value", ylim=(-1.35 * absmax.max().item(), 1.35 * absmax.max().item()),
           title=f"NF4: each block of {blocksize} weights is divided by its absmax, rounded to one of 16 code values")
    ax.legend(fontsize=8, loc="lower right", ncols=2)
    fig.tight_layout()
    return fig


def dora_decomposition(weight: torch.Tensor, *, rows: int = 16, columns: int = 32):
    """DoRA's split of ``weight`` (out x in) into a magnitude per output feature and a unit-norm direction, for the
    first ``rows`` x ``columns``: ``W = m * V / ||V||`` with the norm over each output feature's inputs. Returns the figure."""
    import matplotlib.pyplot as plt

    w = weight.detach().float().cpu()
    magnitude = w.norm(dim=1)  # (out,) one number per output feature: what DoRA trains on its own
    direction = w / magnitude[:, None]  # every row has norm 1
    shown = slice(0, rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), gridspec_kw=dict(width_ratios=[columns, 4, columns]))
    plt.close(fig)
    limit = w[shown, :columns].abs().max().item()
    axes[0].imshow(w[shown, :columns], cmap="RdBu", vmin=-limit, vmax=limit)
    axes[0].set_title("W (frozen weight)", fontsize=9)
    axes[1].barh(range(rows), magnitude[shown].numpy(), color="C2")
    axes[1].invert_yaxis()
    axes[1].set_title("m: ||W||\nper row", fontsize=9)
    d_limit = direction[shown, :columns].abs().max().item()
    axes[2].imshow(direction[shown, :columns], cmap="RdBu", vmin=-d_limit, vmax=d_limit)
    axes[2].set_title("V / ||V||: direction (LoRA updates V)", fontsize=9)
    for ax in (axes[0], axes[2]):
        ax.set(xlabel="input feature", ylabel="output feature")
    fig.suptitle("DoRA: W' = m * (W + BA) / ||W + BA||, shown at the start (BA = 0)", fontsize=10)
    fig.tight_layout()
    return fig


PPO_STEPS = (
    ("prompts", "rollout", "sample completions\nat the temperature"),
    ("rollout", "score", "reward model or verifier:\none score per completion"),
    ("score", "kl_estimate", "-beta x KL to the frozen\nreference, per token"),
    ("kl_estimate", "gae", "advantages and returns\nfrom the value model"),
    ("gae", "policy_loss", "clipped policy loss\n+ value_loss, minibatch epochs"),
    ("policy_loss", "prompts", "the updated policy\nsamples the next batch"),
)
"""PPO's loop as (from, to, what happens): the nodes other than ``prompts`` and ``score`` are ``labkit.ppo``'s functions."""


def ppo_loop():
    """PPO for language models as a loop of :data:`PPO_STEPS` (labkit.ppo's names in the boxes), drawn in two rows.
    Returns the figure."""
    nodes = list(dict.fromkeys(a for a, _, _ in PPO_STEPS))  # six nodes: three left to right, three back
    place = {n: (i, 1.0) if i < 3 else (5 - i, 0.0) for i, n in enumerate(nodes)}
    fig, ax = _figure(10, 3.6)
    for name, (x, y) in place.items():
        ax.annotate(name, (x, y), ha="center", va="center", fontsize=10, family="monospace",
                    bbox=BOX | dict(facecolor="white"))
    for start, end, what in PPO_STEPS:
        (x0, y0), (x1, y1) = place[start], place[end]
        ax.annotate("", xy=(x0 + 0.75 * (x1 - x0), y0 + 0.75 * (y1 - y0)),
                    xytext=(x0 + 0.25 * (x1 - x0), y0 + 0.25 * (y1 - y0)), arrowprops=dict(arrowstyle="->", lw=1.2))
        if y0 == y1:  # along a row: the words above the top row, below the bottom one
            ax.annotate(what, ((x0 + x1) / 2, y0 + (0.22 if y0 else -0.22)), ha="center", va="center", fontsize=8, color="0.3")
        else:  # between the rows: beside the arrow, outside the loop
            ax.annotate(what, (x0 + (0.12 if x0 else -0.12), 0.5), ha="left" if x0 else "right", va="center",
                        fontsize=8, color="0.3")
    ax.set(xlim=(-1.1, 3.1), ylim=(-0.45, 1.45), title="One PPO step (labkit.ppo)")
    ax.axis("off")
    return fig
