"""labkit.data: formats, validation, loss masks, quality filters, dedup, leak-free splits, packing and augmentation."""

from labkit.data.dedup import content_hash, dedup_exact, dedup_near, near_duplicates
from labkit.data.formats import FORMATS, convert, detect_format, record_text, to_alpaca, to_chat, to_completion
from labkit.data.masks import IGNORE_INDEX, tokenize_dataset, tokenize_example
from labkit.data.quality import QualityFilter, normalize, normalize_text, quality_filter
from labkit.data.report import StepReport
from labkit.data.splits import split, split_overlap
from labkit.data.validation import DataFormatError, drop_invalid, find_errors, validate

__all__ = [
    "FORMATS", "IGNORE_INDEX", "DataFormatError", "QualityFilter", "StepReport", "content_hash", "convert",
    "dedup_exact", "dedup_near", "detect_format", "drop_invalid", "find_errors", "near_duplicates", "normalize",
    "normalize_text", "quality_filter", "record_text", "split", "split_overlap", "to_alpaca", "to_chat",
    "to_completion", "tokenize_dataset", "tokenize_example", "validate",
]
