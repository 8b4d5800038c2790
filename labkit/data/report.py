"""What a pipeline step did: how many records went in and out, and which were removed or changed, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StepReport:
    step: str
    """Name of the step, e.g. ``"dedup_exact"``."""
    n_in: int
    """Records that went in."""
    removed: list[tuple[int, str]] = field(default_factory=list)
    """(index in the step's input, reason) of every removed record."""
    changed: int = 0
    """Records kept but modified (normalisation)."""

    @property
    def n_out(self) -> int:
        return self.n_in - len(self.removed)

    def keep(self, items: list) -> list:
        """``items`` (a list parallel to the step's input, e.g. record ids) without the removed positions."""
        gone = {i for i, _ in self.removed}
        return [x for i, x in enumerate(items) if i not in gone]

    @property
    def reasons(self) -> Counter:
        """How many records each reason removed (the reason's text before any ':' detail)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.removed)

    def row(self) -> dict:
        """One line of a pipeline table."""
        why = ", ".join(f"{r} ({n})" for r, n in self.reasons.most_common()) or "-"
        return {"step": self.step, "in": self.n_in, "removed": len(self.removed), "changed": self.changed,
                "out": self.n_out, "why": why}

    def __str__(self) -> str:
        r = self.row()
        return f"{r['step']}: {r['in']} in, {r['removed']} removed, {r['changed']} changed, {r['out']} out; {r['why']}"
