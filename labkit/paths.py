"""Where labkit's shipped files live: the base model, held-out text, task word lists and records."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
"""Every file labkit ships; part of the package, so an installed wheel carries them."""

BASE_DIR = ASSETS / "base"
"""bf16 safetensors, tokenizer, generation defaults and ``build.json`` of the shipped model."""

HELDOUT_FILE = ASSETS / "heldout.jsonl.gz"
"""The held-out pretraining documents (never trained on), identical on every machine."""

WORDS_FILE = ASSETS / "words.txt"
"""Lowercase words the task generators draw from (written by ``labkit.tasks.write_task_assets``)."""

DEFINITIONS_FILE = ASSETS / "stdlib_definitions.json"
"""Standard-library names mapped to the one module that defines each (the ``module`` task)."""

SYNONYMS_FILE = ASSETS / "synonyms.json"
"""WordNet synonyms for the augmentation in ``labkit.data.augment``."""

TUNING_RECORD = ASSETS / "tuning.json"
"""The learning-rate sweep per method kind (``python -m labkit.sweep``)."""
