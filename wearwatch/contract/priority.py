"""Alert priorities (IEC 60601-1-8 sense) and their one order.

``high``: death or irreversible injury possible if not answered at once;
``medium``: prompt response needed; ``low``: awareness. Everything that sorts or
compares alerts by priority (the lifecycle's escalation, the console, the FHIR
search, the demo summary) uses :func:`priority_rank`.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["PRIORITIES", "PriorityName", "priority_rank"]

PriorityName = Literal["high", "medium", "low"]
#: most urgent first
PRIORITIES: tuple[PriorityName, ...] = ("high", "medium", "low")
_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}


def priority_rank(priority: str) -> int:
    """0 for the most urgent priority; unknown names sort after every known one.

    >>> sorted(["low", "high", "medium"], key=priority_rank)
    ['high', 'medium', 'low']
    >>> priority_rank("urgent") > priority_rank("low")
    True
    """
    return _RANK.get(priority, len(PRIORITIES))
