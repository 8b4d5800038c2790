"""A training recipe: one validated dataclass read from YAML, with ``key=value`` overrides, saved with its run."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from labkit.vocabulary import RECIPE_METHODS

OBJECTIVES = ("sft", "dpo", "kto")
"""What a recipe trains: supervised fine-tuning on answers, DPO on preference pairs, or KTO on single answers
labelled desirable or not (``labkit.alignment``)."""
DATA_FORMATS = {"sft": ("completion", "chat"), "dpo": ("preference",), "kto": ("kto",)}
"""The ``labkit.data.FORMATS`` a data file may have for each objective."""
BAD_RECORDS = ("error", "skip")
"""What a run does with data-file records that fail ``labkit.data`` validation: refuse the run, or leave them out
(written to the run's ``rejects.jsonl`` with their errors, and counted in ``train.json``)."""
TASKS_PREFIX = "tasks:"
"""``data: tasks:flip,sort`` draws rows from ``labkit.tasks`` (offline); any other value is a ``.jsonl`` path."""
RECIPE_FILE = "recipe.yaml"
"""The resolved recipe, as written into the run directory."""


class RecipeError(ValueError):
    """A recipe key or value that cannot be used; the message names the key and what was expected."""


@dataclass
class Recipe:
    """Everything one ``labkit train`` run needs; a field left ``None`` is derived from the profile."""

    output_dir: str
    """The run directory: checkpoints, TensorBoard logs, the trained model, the resolved recipe, reports."""
    objective: str = "sft"
    """One of :data:`OBJECTIVES`."""
    method: str = "lora"
    """One of :data:`RECIPE_METHODS`; ``qlora`` loads the base in 4 bits (bitsandbytes)."""
    profile: str = "cpu-tiny"
    """A ``labkit.profiles`` name: sizes, device and precision."""
    model_id: str | None = None
    """A hub id or local folder; ``None``: the profile's model (labkit's embedded model on ``cpu-tiny``)."""
    data: str = "tasks:flip"
    """Training rows: ``tasks:<name>[,<name>...]`` (``labkit.tasks``) or a ``.jsonl`` file in :attr:`data_format`."""
    data_format: str = "completion"
    """Format of a data file: ``completion`` or ``chat`` for SFT, ``preference`` for DPO, ``kto`` for KTO
    (:data:`DATA_FORMATS`). With ``tasks:`` data the objective decides: DPO draws ``labkit.tasks.preference_pairs``,
    KTO ``labkit.tasks.unpaired_preferences``."""
    on_bad_records: str = "error"
    """One of :data:`BAD_RECORDS`: ``error`` refuses a data file with any bad record; ``skip`` trains on the rest."""
    eval_data: str | None = None
    """Held-out rows to score (completion or chat with a ``task`` and ``answer`` per row); ``None`` with
    ``tasks:`` data: the same tasks' :attr:`eval_split`."""
    eval_split: str = "test"
    """The ``labkit.tasks`` split ``labkit eval`` scores: ``validation`` while choosing settings, ``test`` once."""
    train_examples: int | None = None
    """Training rows per task drawn from ``labkit.tasks``; ``None``: the profile's."""
    eval_examples: int | None = None
    """Held-out prompts per task to score; ``None``: the profile's."""
    steps: int | None = None
    """Optimizer steps; ``None``: the profile's ``train_steps``."""
    save_steps: int | None = None
    """Checkpoint every this many steps; ``None``: a quarter of the steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept (the newest); ``None`` keeps all."""
    learning_rate: float | None = None
    """Peak rate (cosine, 5% warm-up); ``None``: the tuned rate of :attr:`method` (DPO: TRL's default; KTO:
    ``labkit.alignment.PREFERENCE_LEARNING_RATE``)."""
    batch_size: int | None = None
    """Sequences (pairs for DPO) per step, at least 2 for KTO; ``None``: the profile's."""
    max_seq_len: int | None = None
    """Longest training sequence in tokens; ``None``: the profile's."""
    r: int = 8
    """LoRA rank (lora, qlora, dora)."""
    lora_alpha: float | None = None
    """LoRA scale numerator; ``None``: ``2 * r``."""
    beta: float = 0.1
    """DPO's and KTO's inverse temperature."""
    seed: int = 0
    """Seed of the adapters' initialisation, the data order and every random draw."""
    memory_gib: float | None = None
    """Memory of the device to plan for; ``None``: measured (a CUDA GPU's total, or the host's RAM)."""

    def __post_init__(self):
        from labkit.data.formats import FORMATS
        from labkit.profiles import PROFILES

        _choice("objective", self.objective, OBJECTIVES)
        _choice("method", self.method, RECIPE_METHODS)
        _choice("profile", self.profile, tuple(PROFILES))
        _choice("data_format", self.data_format, FORMATS)
        _choice("eval_split", self.eval_split, ("validation", "test"))
        _choice("on_bad_records", self.on_bad_records, BAD_RECORDS)
        if not self.output_dir:
            raise RecipeError("output_dir is empty; expected a directory for the run")
        if self.objective != "sft" and self.method == "qlora":
            raise RecipeError(f"method 'qlora' with objective {self.objective!r} is not supported; "
                              "expected full, lora or dora")
        expected = DATA_FORMATS[self.objective]
        if not self.data.startswith(TASKS_PREFIX) and self.data_format not in expected:
            raise RecipeError(f"data_format {self.data_format!r} does not train objective {self.objective!r}; expected "
                              f"{' or '.join(expected)}")
        if self.objective == "kto" and self.batch_size is not None and self.batch_size < 2:
            raise RecipeError(f"batch_size must be >= 2 for objective 'kto' (its KL estimate pairs rows within a "
                              f"batch), got {self.batch_size}")
        if self.data.startswith(TASKS_PREFIX):
            from labkit.tasks import TASKS

            for task in self.tasks:
                _choice("data (a labkit.tasks name)", task, TASKS)
        for name in ("train_examples", "eval_examples", "steps", "save_steps", "batch_size", "max_seq_len", "r"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be >= 1, got {value}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise RecipeError(f"save_total_limit must be >= 1 or null, got {self.save_total_limit}")
        for name in ("learning_rate", "lora_alpha", "beta", "memory_gib"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise RecipeError(f"{name} must be > 0, got {value}")
        if self.steps is not None and self.save_steps is not None and self.save_steps > self.steps:
            raise RecipeError(f"save_steps ({self.save_steps}) must be <= steps ({self.steps}): no checkpoint would be written")

    @property
    def tasks(self) -> list[str]:
        """The ``labkit.tasks`` names of ``tasks:`` data; empty for a data file."""
        if not self.data.startswith(TASKS_PREFIX):
            return []
        return [t.strip() for t in self.data[len(TASKS_PREFIX):].split(",") if t.strip()]

    def resolved(self):
        """(this recipe with every ``None`` size filled in from its profile, the profile)."""
        from labkit.profiles import get_profile

        profile = get_profile(self.profile, model_id=self.model_id, batch_size=self.batch_size,
                              max_seq_len=self.max_seq_len, train_steps=self.steps,
                              train_examples=self.train_examples, eval_examples=self.eval_examples)
        steps = profile.train_steps
        if self.objective == "kto" and profile.batch_size < 2:
            raise RecipeError(f"batch_size: profile {self.profile!r} gives {profile.batch_size}; "
                              "objective 'kto' needs >= 2")
        filled = dataclasses.replace(
            self, model_id=profile.model_id, steps=steps, batch_size=profile.batch_size, max_seq_len=profile.max_seq_len,
            train_examples=profile.train_examples, eval_examples=profile.eval_examples,
            save_steps=min(self.save_steps or max(1, steps // 4), steps),
            lora_alpha=self.lora_alpha or 2 * self.r)
        return filled, profile

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise RecipeError(f"{name} is {value!r}; expected one of {', '.join(map(str, choices))}")


def field_names() -> list[str]:
    """The keys a recipe accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(Recipe)]


def _unknown_key(key: str, where: str) -> RecipeError:
    known = field_names()
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return RecipeError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(known)}")


def _field_types() -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(Recipe)
    out = {}
    for name in field_names():
        hint = hints[name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        out[name] = tuple(args)
    return out


def coerce(key: str, value, where: str = "recipe", *, from_text: bool = False):
    """``value`` as field ``key``'s type: ints may stand for floats, ``null`` for ``None`` where allowed.

    ``from_text``: ``value`` is a command-line string, read as a number where the field holds numbers.
    Raises :class:`RecipeError` naming ``key`` for an unknown key or a value of the wrong type.
    """
    allowed = _field_types().get(key)
    if allowed is None:
        raise _unknown_key(key, where)
    if from_text:
        value = _from_text(value.strip(), allowed)
    if value is None:
        if type(None) in allowed:
            return None
        raise RecipeError(f"{where}: {key} may not be null; expected {allowed[0].__name__}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, bool):
        raise RecipeError(f"{where}: {key} is {value!r}; expected an integer")
    if not isinstance(value, tuple(t for t in allowed if t is not type(None))):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise RecipeError(f"{where}: {key} is {type(value).__name__} {value!r}; expected {names}")
    return value


def _from_text(text: str, allowed: tuple[type, ...]):
    if text in ("null", "None", "none", "~", "") and type(None) in allowed:
        return None
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                pass
    if str not in allowed:  # a number field given text that is no number: report the value as read
        try:
            return float(text)
        except ValueError:
            return text
    return text


def parse_overrides(pairs: list[str]) -> dict:
    """``["steps=20", "method=full"]`` as ``{"steps": 20, "method": "full"}``, typed by the recipe's fields."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RecipeError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = coerce(key.strip(), value, where="--set", from_text=True)
    return out


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict = (), **fields) -> Recipe:
    """The recipe in YAML file ``path`` (or none), then ``fields``, then ``overrides`` (``key=value`` strings)."""
    import yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise RecipeError(f"{path}: holds a {type(loaded).__name__}; expected a mapping of recipe keys")
        values = {key: coerce(key, value, where=str(path)) for key, value in loaded.items()}
    values |= {key: coerce(key, value, where="recipe") for key, value in fields.items()}
    values |= parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
    if "output_dir" not in values:
        raise RecipeError(f"{path or 'recipe'}: output_dir is missing; expected the run directory")
    return Recipe(**values)


def save_recipe(recipe: Recipe, run_dir: str | Path) -> Path:
    """Write ``recipe`` as :data:`RECIPE_FILE` in ``run_dir``; returns the file."""
    import yaml

    path = Path(run_dir) / RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe a run saved in ``run_dir``."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise RecipeError(f"{run_dir}: no {RECIPE_FILE}; expected a run directory written by 'labkit train'")
    return load_recipe(path)
