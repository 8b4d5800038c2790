"""NF4 from scratch: the 4-bit NormalFloat data type of QLoRA, with blockwise absmax scaling.

Dettmers et al. (2023), "QLoRA", §3: pretrained weights are roughly normal, so the 16 code values
are quantiles of N(0, 1) -- 8 for the positive half, 7 for the negative half, and an exact zero --
rescaled to [-1, 1]. Each block of ``blocksize`` weights is divided by its absolute maximum before
being rounded to the nearest code; the block's absmax (one fp32 number per block) is kept to undo
the scaling.
"""

from __future__ import annotations

import torch

NF4_OFFSET = 0.9677083
"""The outermost quantile: 1/2 * (1/(2*7) + 1/(2*8)) from 1, so that ±1 are not ±infinity (QLoRA, App. E)."""


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 code values, ascending, in [-1, 1], with an exact 0."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (values / values.abs().max()).float()


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): a 4-bit code index per weight (uint8, 0..15) and one fp32 absmax per block."""
    flat = weight.detach().float().reshape(-1)
    if flat.numel() % blocksize:
        raise ValueError(f"{flat.numel()} weights do not split into blocks of {blocksize}")
    blocks = flat.view(-1, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    codes = (scaled[..., None] - nf4_code()).abs().argmin(dim=-1)  # nearest code value
    return codes.to(torch.uint8).view(-1), absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, blocksize: int = 64) -> torch.Tensor:
    """Code value times its block's absmax, reshaped to ``shape``."""
    values = nf4_code()[codes.long()].view(-1, blocksize) * absmax[:, None]
    return values.view(shape)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' packed 4-bit storage as one code index per weight (two per byte, the first in the high nibble)."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)
