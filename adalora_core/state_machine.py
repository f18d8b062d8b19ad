"""The one way a state machine here refuses a move: the job lifecycle (`service.lifecycle`) and
the adapter cache (`adalora_core.serving.cache`) each keep their own table of allowed moves and
check it with :func:`check_transition`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

S = TypeVar("S", bound=Enum)


class IllegalTransition(ValueError):
    """A move its machine's table does not allow: ``current`` and ``new`` are the states' values."""

    def __init__(self, machine: str, current: Enum | str, new: Enum | str) -> None:
        self.machine = machine
        self.current = current.value if isinstance(current, Enum) else current
        self.new = new.value if isinstance(new, Enum) else new
        super().__init__(f"{machine} cannot move from {self.current!r} to {self.new!r}")


def check_transition(machine: str, table: Mapping[S, frozenset[S]], current: S, new: S) -> None:
    """Raise IllegalTransition unless ``table`` allows ``current`` → ``new``."""
    if new not in table[current]:
        raise IllegalTransition(machine, current, new)
