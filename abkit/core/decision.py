"""What a look decides: an :class:`Action` and the sentences that justify it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOLD = "hold"
    STOP_INCONCLUSIVE = "stop_inconclusive"
    RAMP = "ramp"

    @property
    def terminal(self) -> bool:
        """Promote, rollback and stop conclude the experiment (sticky)."""
        return self in (Action.PROMOTE, Action.ROLLBACK, Action.STOP_INCONCLUSIVE)

    @classmethod
    def terminal_name(cls, name: str) -> bool:
        """Whether an audit-trail action name (which may also be ``start``, ``pause``, ...) is a
        terminal decision."""
        return name in _TERMINAL_NAMES


_TERMINAL_NAMES = frozenset(a.value for a in Action if a.terminal)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after one look, and why (each reason a sentence a product owner can read)."""

    action: Action
    reasons: tuple[str, ...]
    arm: str | None = None
    coverage: float | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
