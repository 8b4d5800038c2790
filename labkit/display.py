"""Show what the model sees: tokens as coloured chips, with the trained (loss-bearing) span marked."""

from __future__ import annotations

import html
from collections.abc import Sequence

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
