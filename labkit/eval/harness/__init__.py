"""Cross-check against lm-evaluation-harness: the same texts, scored by its rolling log-likelihood."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

TASK_TEMPLATE = Path(__file__).parent / "labkit_heldout.yaml"


def harness_metrics(
    model_dir: str | Path, texts: Sequence[str], *, batch_size: int = 8, device: str = "cpu", dtype: str = "float32"
) -> dict[str, float]:
    """lm-evaluation-harness's ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` of ``texts``.

    The harness loads the model itself -- from a local directory (offline) or a hub id -- and takes
    its context length from the model's config.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "docs.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        (Path(tmp) / "labkit_heldout.yaml").write_text(TASK_TEMPLATE.read_text().replace("DATA_FILE", str(data)))
        results = simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir},dtype={dtype}",
            tasks=["labkit_heldout"],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            batch_size=batch_size,
            device=device,
        )
    metrics = results["results"]["labkit_heldout"]
    return {name: metrics[f"{name},none"] for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
