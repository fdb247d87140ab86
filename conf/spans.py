"""Spans of a series as configs write them: a count of steps, or a duration (14d, 36h, 90min)."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION = re.compile(r"^(\d+)(w|d|h|min|s)$")  # a span of time: 14d, 36h, 90min
DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "min": "minutes", "s": "seconds"}


def steps_or_duration(value: int | str | None) -> int | str | None:
    """A span of a series as a config writes it: a positive count of steps, or a duration."""
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise ValueError(f"must be a positive number of steps or a duration such as '14d', got {value!r}")
    if isinstance(value, str) and not DURATION.match(value.strip()):
        raise ValueError(f"must be a number of steps or a duration such as 14d, 36h, 90min, got {value!r}")
    return value.strip() if isinstance(value, str) else value


def duration(text: str) -> timedelta:
    """'14d', '36h', '90min', '30s', '2w' as a timedelta (the form steps are written in)."""
    match = DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 14d, 36h, 90min")
    number, unit = match.groups()
    return int(number) * timedelta(**{DURATION_UNITS[unit]: 1})
