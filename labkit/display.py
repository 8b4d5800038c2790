"""What a chapter shows: tokens as coloured chips (the trained span marked), and its closing takeaways."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


def token_chips(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], trained: Sequence[int | bool] | None = None) -> str:
    """HTML with one chip per token; chips where ``trained`` is truthy are green (they carry loss).

    Whitespace is made visible: a space shows as ``·``, a newline as ``↵``.
    """
    if trained is not None and len(trained) != len(ids):
        raise ValueError(f"trained has {len(trained)} entries for {len(ids)} tokens")
    chips = []
    for i, token_id in enumerate(ids):
        text = tokenizer.decode([token_id]).replace(" ", "·").replace("\n", "↵")
        on = trained is not None and bool(trained[i])
        style = "background:#b7e4c7;border-color:#2d6a4f" if on else "background:#eee;border-color:#bbb"
        chips.append(
            f'<span title="id {token_id}" style="{style};border:1px solid;border-radius:3px;'
            f'padding:0 2px;margin:1px;font-family:monospace;display:inline-block">{html.escape(text)}</span>'
        )
    legend = "" if trained is None else '<div style="font-size:80%">green = in the loss; grey = context only</div>'
    return f'<div style="line-height:1.9">{"".join(chips)}</div>{legend}'


@dataclass(frozen=True, repr=False)
class Takeaways:
    """A chapter's closing sentences, each built from its own results; a notebook shows them as a list."""

    sentences: tuple[str, ...]
    """One finding per sentence, its numbers formatted from the chapter's variables."""

    def __post_init__(self):
        if not 1 <= len(self.sentences) <= MAX_TAKEAWAYS:
            raise ValueError(f"expected 1 to {MAX_TAKEAWAYS} takeaways, got {len(self.sentences)}")
        for i, sentence in enumerate(self.sentences):
            if not isinstance(sentence, str) or not sentence.strip():
                raise ValueError(f"takeaway {i} is {sentence!r}; expected a non-empty sentence")

    def _repr_markdown_(self) -> str:
        return "**Takeaways**\n\n" + "\n".join(f"- {s.strip()}" for s in self.sentences)

    def __repr__(self) -> str:  # the text/plain a notebook keeps beside the Markdown
        return "\n".join(f"- {s.strip()}" for s in self.sentences)


MAX_TAKEAWAYS = 6


def takeaways(*sentences: str) -> Takeaways:
    """Close a chapter with what its run showed: ``takeaways(f"LoRA trained {share:.2%} of the weights", ...)``."""
    return Takeaways(tuple(sentences))
