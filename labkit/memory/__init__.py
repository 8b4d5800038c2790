"""Will it fit? Estimate and measure the memory of fine-tuning a decoder, term by term."""

from labkit.memory.architectures import ARCHITECTURES, Architecture, resolve
from labkit.memory.estimate import estimate_memory
from labkit.memory.measure import measure_memory
from labkit.memory.plan import STRATEGIES, smallest_fit
from labkit.memory.peak import PeakMemory, StepCost, step_cost, step_peak_bytes
from labkit.memory.report import TERMS, MemoryReport
from labkit.memory.setup import TrainingSetup

__all__ = ["ARCHITECTURES", "Architecture", "MemoryReport", "PeakMemory", "STRATEGIES", "StepCost", "TERMS", "TrainingSetup", "estimate_memory", "measure_memory", "resolve",
           "smallest_fit", "step_cost", "step_peak_bytes"]
