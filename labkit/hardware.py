"""What this machine can do fast: native bf16 on the CPU (AVX512-BF16, AMX) or on a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import torch


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()


def cpu_has_avx512_bf16() -> bool:
    """True where bitsandbytes' CPU repacking (and so the bug ``labkit.quant.guard_cpu_4bit`` prevents) can happen."""
    return "avx512_bf16" in _cpu_flags()


def native_bf16(device: str | torch.device) -> bool:
    """True where bf16 matrix products run in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere the CPU emulates them, many times slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
