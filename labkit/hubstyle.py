"""A hub-style model and tokenizer built offline, to rehearse the GPU profile's code path on a CPU.

No model hub is reachable where the book is tested, so the ``gpu-rehearsal`` profile cannot load a
real checkpoint. What it can do is make every way a hub model differs from labkit's embedded one show
up in a CPU run:

* another architecture: Qwen2 (biased q/k/v projections; grouped-query attention with 14 query and 2
  key/value heads; rope theta 1e6) with Qwen2.5-0.5B's widths (``labkit.memory.ARCHITECTURES``), shrunk only where CPU
  time demands it: 2 layers instead of 24, an MLP of 1,024 instead of 4,864, 2,048 positions instead
  of 32,768 (a held-out document is scored in one window of the model's context), and labkit's
  4,096-token vocabulary instead of 151,936;
* weights stored in bf16, as hub checkpoints are;
* a tokenizer whose end-of-sequence token is ``<|im_end|>`` (labkit's is ``<|endoftext|>``), whose
  padding token is ``<|endoftext|>`` (labkit's is ``<|pad|>``), as Qwen2.5-Instruct's are, and whose
  ChatML chat template has no ``{% generation %}`` markers (Qwen2.5's and SmolLM2's own have none either).

The weights are random: the rehearsal checks that code runs and where tensors live, not what a
model learns. ``HUB_STYLE_FULL_ID`` names the same model at Qwen2.5-0.5B's full shape (24 layers,
151,936 embedding rows), which the ``gpu-check`` profile runs on a GPU machine that reaches no hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

HUB_STYLE_ID = "labkit/hub-style-qwen2"
"""The ``model_id`` that names this model in a profile; ``labkit.profiles.model_path`` builds it on first use."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
"""ChatML as hub models ship it: no ``{% generation %}`` markers, so no assistant-token mask."""

SHAPE = dict(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, intermediate_size=1024,
             num_hidden_layers=2, max_position_embeddings=2048, rope_theta=1_000_000.0, tie_word_embeddings=True)
"""Qwen2.5-0.5B's attention shape; depth and MLP width shrunk for the CPU."""

HUB_STYLE_FULL_ID = "labkit/hub-style-qwen2.5-0.5b"
"""The ``model_id`` of the same model at Qwen2.5-0.5B's full shape (the ``gpu-check`` profile)."""

FULL_SHAPE = dict(SHAPE, intermediate_size=4864, num_hidden_layers=24, max_position_embeddings=32768, vocab_size=151936)
"""Qwen2.5-0.5B's published config (``labkit.memory.ARCHITECTURES``); the embedding has more rows than the
tokenizer has tokens, as Qwen's own has (151,936 rows for 151,665 tokens)."""

SHAPES = {HUB_STYLE_ID: SHAPE, HUB_STYLE_FULL_ID: FULL_SHAPE}
"""Every hub-style ``model_id`` and its shape."""


def default_dir(model_id: str = HUB_STYLE_ID) -> Path:
    """Where the model is built: one folder per model and labkit version in the system's temporary directory."""
    from labkit import __version__

    return Path(tempfile.gettempdir()) / f"labkit-{model_id.split('/')[-1]}-{__version__}"


def build_hub_style(path: str | Path | None = None, *, model_id: str = HUB_STYLE_ID, seed: int = 0) -> Path:
    """Write the hub-style model ``model_id`` (a key of :data:`SHAPES`) and its tokenizer to ``path``
    (default :func:`default_dir`) unless already there.

    Safe when several processes build at once: each builds in its own folder and renames it into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from labkit.paths import BASE_DIR
    from labkit.tokenizer import EOS, IM_END, IM_START

    if model_id not in SHAPES:
        raise ValueError(f"unknown hub-style model {model_id!r}; expected one of {', '.join(SHAPES)}")
    shape = SHAPES[model_id]
    path = Path(path or default_dir(model_id))
    if any(path.glob("*.safetensors")):
        return path
    building = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(BASE_DIR / "tokenizer.json"), eos_token=IM_END, pad_token=EOS,
                                        additional_special_tokens=[IM_START], model_max_length=shape["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(building)
    config = Qwen2Config(**{"vocab_size": len(tokenizer), **shape}, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(building)
    try:
        os.rename(building, path)
    except OSError:  # another process finished first
        if not any(path.glob("*.safetensors")):
            raise
        shutil.rmtree(building, ignore_errors=True)
    return path
