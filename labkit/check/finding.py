"""``Finding``: one pitfall a check detected -- what, where, what was expected, and the cheapest fix."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning")
"""``error``: the run will go wrong as configured; ``warning``: it may, or it wastes time or memory."""


@dataclass(frozen=True)
class Finding:
    """What a check found. A check returns a list of them, empty when all is well."""

    check: str
    """The check's name: the function that found it (``eos_in_labels``, ``fits_memory``, ...)."""
    severity: str
    """One of :data:`SEVERITIES`."""
    message: str
    """What is wrong, where (which record, field or module) and what was expected."""
    fix: str
    """The cheapest remedy."""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding {self.check!r}: severity {self.severity!r}; expected one of {', '.join(SEVERITIES)}")
        for field in ("check", "message", "fix"):
            if not getattr(self, field):
                raise ValueError(f"Finding {self.check!r}: {field} is empty; expected text")

    def __str__(self) -> str:
        return f"{self.severity}: {self.check}: {self.message} Fix: {self.fix}"
