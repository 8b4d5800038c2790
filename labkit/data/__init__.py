"""labkit.data: formats, validation, loss masks, quality filters, dedup, leak-free splits, packing and augmentation."""

from labkit.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("content_hash", "dedup_exact", "dedup_near", "near_duplicates"), "labkit.data.dedup"),
    **dict.fromkeys(("FORMATS", "convert", "detect_format", "record_text", "to_alpaca", "to_chat", "to_completion"),
                    "labkit.data.formats"),
    **dict.fromkeys(("IGNORE_INDEX", "tokenize_dataset", "tokenize_example"), "labkit.data.masks"),
    **dict.fromkeys(("QualityFilter", "normalize", "normalize_text", "quality_filter"), "labkit.data.quality"),
    "StepReport": "labkit.data.report",
    **dict.fromkeys(("split", "split_overlap"), "labkit.data.splits"),
    **dict.fromkeys(("DataFormatError", "drop_invalid", "find_errors", "validate"), "labkit.data.validation"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
