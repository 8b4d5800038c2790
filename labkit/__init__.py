"""labkit: the Fine-Tuning Lab's toolkit -- an offline base model, task data, evaluation and profiles."""

from labkit.base import build_record, complete, heldout_perplexity, load_base, pretrain_record
from labkit.profiles import PROFILES, Profile, get_profile, load_model

__version__ = "0.1.0"
__all__ = [
    "PROFILES", "Profile", "build_record", "complete", "get_profile", "heldout_perplexity", "load_base",
    "load_model", "pretrain_record",
]
