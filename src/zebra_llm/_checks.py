"""The one integer check every typed config and kernel shares (nothing of the package imported: its bottom).

``True`` and ``False`` are ``int`` to Python but never a count or a length here, so they are refused.
Callers that report a setting in their own way (``ZebraConfig.window`` as a ``LayerSettingError``,
``model.window`` as a ``ConfigError``) pass their ``error``; the phrase is always :func:`int_problem`'s.
"""

from __future__ import annotations

from typing import Callable


def int_problem(value, minimum: int = 1) -> str | None:
    """What is wrong with ``value`` as an integer ``>= minimum`` (``"must be an integer >= 1, got 0"``),
    or None when nothing is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"must be an integer >= {minimum}, got {value!r}"
    return None


def check_int(name: str, value, minimum: int = 1, *, error: Callable[[str, str], Exception] | None = None) -> int:
    """``value`` when it is an integer ``>= minimum``; else raise ``error(name, problem)`` (default: a
    ``ValueError`` reading ``"<name> must be an integer >= <minimum>, got <value>"``)."""
    problem = int_problem(value, minimum)
    if problem is not None:
        raise (error or _value_error)(name, problem)
    return value


def _value_error(name: str, problem: str) -> ValueError:
    return ValueError(f"{name} {problem}")


__all__ = ["check_int", "int_problem"]
