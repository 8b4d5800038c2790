import pytest

from labkit import hardware


@pytest.mark.parametrize("flags, avx512_bf16, native", [
    ({"avx2", "fma"}, False, False),
    ({"avx512f", "avx512_bf16"}, True, True),
    ({"amx_bf16", "amx_tile"}, False, True),
])
def test_cpu_bf16_follows_the_processor_flags(monkeypatch, flags, avx512_bf16, native):
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    assert hardware.cpu_has_avx512_bf16() is avx512_bf16
    assert hardware.native_bf16("cpu") is native


def test_cuda_bf16_needs_a_gpu_that_supports_it(monkeypatch):
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: False)
    assert not hardware.native_bf16("cuda")
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.native_bf16("cuda:0")


def test_the_flags_are_whole_words_of_proc_cpuinfo():
    flags = hardware._cpu_flags()
    assert not flags or "fpu" in flags  # every x86 processor lists its floating-point unit
