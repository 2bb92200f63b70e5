"""Enums open to values a newer Relay adds, so that a client already installed still reads its answers."""

from __future__ import annotations

import enum
from typing import Any


class OpenEnum(enum.StrEnum):
    """The values Relay sends in one field, open to values a newer Relay adds.

    A value this client does not know still decodes: as an instance of the field's enum that is none of the members
    listed, whose ``value`` is the string Relay sent and whose ``known`` is False (its name is ``UNKNOWN``). Compare
    with the listed members (``task.status is TaskStatus.FAILED``; members are strings, so ``==`` works too), and give
    a value you do not know a branch of its own rather than taking the list as complete.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        # Not cached: a server that sent many made-up values would otherwise grow the class without bound.
        unknown = str.__new__(cls, value)
        unknown._name_ = "UNKNOWN"
        unknown._value_ = value
        return unknown

    @property
    def known(self) -> bool:
        """Whether this client knows the value (False: one a newer Relay sends)."""
        return self._value_ in type(self)._value2member_map_
