"""labkit.check: pre-flight checks for the classic fine-tuning pitfalls, each returning a list of :class:`Finding` objects."""

from labkit.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("SEVERITIES", "Finding"), "labkit.check.finding"),
    **dict.fromkeys(("eos_in_labels", "stop_token_ids"), "labkit.check.labels"),
    "chat_template_match": "labkit.check.template",
    **dict.fromkeys(("packing_isolation", "padding_side"), "labkit.check.batches"),
    **dict.fromkeys(("LEVERS", "cheapest_fit", "fits_memory"), "labkit.check.memory"),
    **dict.fromkeys(("merge_quantized", "precision"), "labkit.check.weights"),
    **dict.fromkeys(("PitfallMonitor", "forgetting_above", "overfitting"), "labkit.check.monitors"),
    "preflight": "labkit.check.suite",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
