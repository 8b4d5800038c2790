"""labkit: the Fine-Tuning Lab's toolkit -- an offline base model, task data, evaluation and profiles."""

from labkit.base import build_record, load_base, pretrain_record
from labkit.eval.heldout import heldout_perplexity
from labkit.generation import complete
from labkit.profiles import PROFILES, Profile, get_profile, load_model

__version__ = "0.1.0"
__all__ = [
    "PROFILES", "Profile", "build_record", "complete", "get_profile", "heldout_perplexity", "load_base",
    "load_model", "pretrain_record",
]
