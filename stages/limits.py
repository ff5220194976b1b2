"""A stage's ``limits``: the allowed values of its config fields, declared once, checked before work.

``limits = {"conf_threshold": "(0, 1)", "crop_size": "[64, inf)", "select": ("auto", "largest")}``:
a string is an interval in the usual notation (``inf`` allowed), a tuple the allowed choices; a
list or tuple value is checked element by element. The message names the field and the rule.
"""
from __future__ import annotations

import math
from typing import Any


def _interval(rule: str) -> tuple[bool, float, float, bool]:
    if rule[0] not in "[(" or rule[-1] not in "])" or "," not in rule:
        raise ValueError(f"bad interval {rule!r}: write it like '[0, 1)'")
    lo, hi = (float(part.strip()) for part in rule[1:-1].split(","))
    return rule[0] == "[", lo, hi, rule[-1] == "]"


def allowed(value: Any, rule: str | tuple) -> bool:
    """Whether ``value`` (or every element of a list/tuple value) satisfies ``rule``."""
    if isinstance(value, (list, tuple)):
        return all(allowed(v, rule) for v in value)
    if not isinstance(rule, str):
        return value in rule
    closed_lo, lo, hi, closed_hi = _interval(rule)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return (lo <= value if closed_lo else lo < value) and (value <= hi if closed_hi else value < hi)


def check(stage: Any) -> None:
    """Raise ValueError naming the first field of ``stage`` outside its declared limit."""
    rules: dict[str, Any] = {}
    for cls in reversed(type(stage).__mro__):
        rules.update(cls.__dict__.get("limits", {}))
    for name, rule in rules.items():
        value = getattr(stage, name)
        if not allowed(value, rule):
            what = f"in {rule}" if isinstance(rule, str) else f"one of {tuple(rule)}"
            raise ValueError(f"{name} must be {what}, got {value!r}")
