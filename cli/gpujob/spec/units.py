"""Parsing of durations (``1h30m``), Kubernetes size quantities (``32Gi``) and CPU counts.

Every parser raises :class:`ValueError` with a message written for the person
editing the spec; the models turn those into validation errors.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_quantity", "parse_cpu", "format_duration", "shown",
           "MAX_DURATION", "MAX_QUANTITY", "MAX_CPU"]

MAX_DURATION = 30 * 86400  # 30d: the longest runtime, lifetime, idle or collective timeout a job may ask for
MAX_QUANTITY = 2**50  # 1Pi: more memory, shared memory or disk than any machine has
MAX_CPU = 1024  # cores
_MAX_TEXT = 40  # longer than any sane duration, size or CPU count: refused before parsing

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_DURATION_FULL = re.compile(r"^(?:\d+(?:\.\d+)?[dhms])+$")

_QUANTITY_SUFFIXES = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_HUMAN_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgGtTpP])(i?)[bB]?$")
_DURATION_EXAMPLE = "write it with a unit, e.g. 90m, 12h, 1h30m, 2d or 45s"


def shown(value: object, limit: int = _MAX_TEXT) -> str:
    """``repr(value)`` for messages, cut to about ``limit`` characters so a huge value is never echoed back."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number with about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def parse_duration(value: str) -> int:
    """Parse ``45s``, ``90m``, ``12h``, ``1h30m``, ``2d`` into whole seconds (> 0, at most 30 days)."""
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError(f"empty duration; {_DURATION_EXAMPLE}")
    if len(text) > _MAX_TEXT:
        raise ValueError(f"{shown(value)} is too long to be a duration; {_DURATION_EXAMPLE}")
    value = shown(value)  # type: ignore[assignment]  # from here on only used in messages
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise ValueError(f"{value} has no unit; {_DURATION_EXAMPLE}")
    if not _DURATION_FULL.match(text):
        raise ValueError(f"{value} is not a duration; {_DURATION_EXAMPLE}")
    parts = _DURATION_PART.findall(text)
    units = [unit for _, unit in parts]
    order = list(_DURATION_UNITS)
    if len(set(units)) != len(units) or units != sorted(units, key=order.index):
        raise ValueError(f"{value}: give each unit once, largest first (e.g. 1h30m)")
    seconds = sum(float(num) * _DURATION_UNITS[unit] for num, unit in parts)
    if seconds < 1:
        raise ValueError(f"{value} is shorter than one second")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value} is longer than {format_duration(MAX_DURATION)}, the longest duration allowed")
    return int(round(seconds))


def format_duration(seconds: int) -> str:
    """Render seconds compactly, e.g. 5400 -> ``1h30m``."""
    out = []
    for unit, size in _DURATION_UNITS.items():
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def parse_quantity(value: str) -> int:
    """Parse a Kubernetes quantity (``32Gi``, ``16G``, ``512Mi``) into bytes (> 0).

    A bare number is rejected (it would mean bytes, which is never what a job wants),
    and common spellings like ``32GB``/``32GiB`` get a hint towards the Kubernetes form.
    """
    text = value.strip()
    if len(text) > _MAX_TEXT:
        raise ValueError(f"{shown(value)} is too long to be a size; use a Kubernetes quantity like 32Gi, 16G or 512Mi")
    match = _QUANTITY.match(text)
    if match is None:
        human = _HUMAN_SIZE.match(text)
        if human:
            num, prefix, binary = human.groups()
            prefix = "k" if prefix.lower() == "k" and not binary else prefix.upper()
            raise ValueError(
                f"{value!r} is not a Kubernetes quantity; write {num}{prefix}{'i' if binary else ''}"
                f" (or {num}{prefix.upper() if binary else prefix}i for powers of 1024)"
            )
        raise ValueError(f"{value!r} is not a size; use a Kubernetes quantity like 32Gi, 16G or 512Mi")
    num, suffix = match.group(1), match.group(2) or ""
    if not suffix:
        raise ValueError(f"{value!r} has no unit (it would mean {num} bytes); write e.g. {num}Gi or {num}Mi")
    size = float(num) * _QUANTITY_SUFFIXES[suffix]
    if size > MAX_QUANTITY:
        raise ValueError(f"{value!r} is more than 1Pi, the largest size allowed")
    if int(size) <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return int(size)


def parse_cpu(value: object) -> float:
    """Parse a CPU count: a number (``4``, ``0.5``) or Kubernetes millicores (``500m``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of CPUs like 4 or 0.5, or millicores like 500m, got {str(value).lower()}")
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{shown(value)} is far too many CPUs") from None
    if isinstance(value, str) and len(value.strip()) <= _MAX_TEXT:
        text = value.strip()
        if re.fullmatch(r"\d+m", text):
            return int(text[:-1]) / 1000
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
    got = shown(value) if isinstance(value, str) else type(value).__name__
    raise ValueError(f"expected a number of CPUs like 4 or 0.5, or millicores like 500m, got {got}")
