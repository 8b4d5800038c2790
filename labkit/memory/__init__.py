"""Will it fit? Estimate and measure the memory of fine-tuning a decoder, term by term."""

from labkit.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ARCHITECTURES", "Architecture", "resolve"), "labkit.memory.architectures"),
    "estimate_memory": "labkit.memory.estimate",
    "measure_memory": "labkit.memory.measure",
    **dict.fromkeys(("STRATEGIES", "smallest_fit"), "labkit.memory.plan"),
    **dict.fromkeys(("PeakMemory", "StepCost", "reference_forward_peak", "step_cost", "step_peak_bytes"), "labkit.memory.peak"),
    **dict.fromkeys(("TERMS", "MemoryReport"), "labkit.memory.report"),
    "TrainingSetup": "labkit.memory.setup",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
