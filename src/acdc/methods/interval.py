"""When a method changes its masks: every ``update_every`` optimizer steps inside a window of steps.

One helper for GMP (its prune steps), RigL/SET (drop/grow updates) and Top-KAST (mask refreshes), so "every N
steps" is spelled and validated once.
"""

from __future__ import annotations

from dataclasses import dataclass


def check_every(update_every: object, owner: str) -> int:
    """``update_every`` as a positive int, else ``ValueError`` naming ``owner`` (the method)."""
    if not (isinstance(update_every, int) and update_every >= 1):
        raise ValueError(f"{owner}: update_every must be a positive number of steps, got {update_every!r}")
    return update_every


@dataclass(frozen=True)
class StepInterval:
    """Steps ``start, start + every, ...`` before ``stop`` (exclusive; ``None``: no end), plus ``stop`` itself
    when ``final`` (GMP prunes on its last ramp step even off the grid)."""

    every: int
    start: int = 0
    stop: int | None = None
    final: bool = False

    def is_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based count of steps taken; 0 = at construction) is an update step."""
        if self.final and step == self.stop:
            return step >= self.start
        if step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0
