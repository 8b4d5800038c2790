"""labkit: the Fine-Tuning Lab's toolkit -- an offline base model, task data, evaluation and profiles."""

from labkit.lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {
    "build_record": "labkit.base", "load_base": "labkit.base", "pretrain_record": "labkit.base",
    "heldout_perplexity": "labkit.eval.heldout", "complete": "labkit.generation",
    "PROFILES": "labkit.profiles", "Profile": "labkit.profiles", "get_profile": "labkit.profiles",
    "load_model": "labkit.profiles", "Finding": "labkit.check", "preflight": "labkit.check",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
