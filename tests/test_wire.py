"""gpujob.wire: the one Docker timestamp parser agrees with the three it replaced, on every form
Docker writes (RFC 3339 with 0-9 fraction digits, ``Z`` or an offset), and never raises."""

from __future__ import annotations

import calendar
import math
import re
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.wire import docker_time, rfc3339_ns

# ----------------------------------------------------------------------------- the parsers it replaced, as they were

_OLD_AGENT_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?")


def old_agent_time(text):
    """parse_docker_time of the agent (gpujob/hosts/agent.py, before the split)."""
    m = _OLD_AGENT_TIME.match(text or "")
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year < 1971:
        return None
    value = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if m.group(7):
        value += float("0." + m.group(7))
    zone = m.group(8)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        value -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return value


def old_docker_epoch(stamp):
    """gpujob/backends/docker/__init__.py _epoch (State.StartedAt, always in UTC)."""
    if not stamp or stamp.startswith("0001-"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")
    except ValueError:
        return None


_OLD_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def old_logfollow_ns(line):
    """gpujob/backends/logfollow.py parse_ts (a log line's timestamp, in nanoseconds)."""
    head, sep, text = line.partition(" ")
    m = _OLD_TS.match(head)
    if not m:
        return None, line
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    frac = int((m.group(2) or "0").ljust(9, "0"))
    return int(base.timestamp()) * 1_000_000_000 + frac, text


# ----------------------------------------------------------------------------- Docker's forms


@st.composite
def docker_stamps(draw, utc_only=False):
    """RFC3339Nano as Docker writes it: trailing zeros of the fraction trimmed (or not: both
    are read), no fraction at all, ``Z`` or an offset."""
    when = draw(st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(9998, 12, 30)))
    nanos = draw(st.integers(0, 999_999_999))
    digits = draw(st.integers(0, 9))
    frac = f"{nanos:09d}"[:digits]
    if draw(st.booleans()):
        frac = frac.rstrip("0")
    zone = "Z"
    if not utc_only and draw(st.booleans()):
        zone = f"{draw(st.sampled_from('+-'))}{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}"
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + zone


@given(docker_stamps())
@settings(max_examples=400, deadline=None)
def test_the_parser_agrees_with_the_old_ones_on_dockers_forms(stamp):
    ns = rfc3339_ns(stamp)
    assert ns == old_logfollow_ns(stamp + " text")[0]               # exactly, to the nanosecond
    seconds, old = docker_time(stamp), old_agent_time(stamp)
    assert abs(seconds - old) <= 2 * math.ulp(old)                 # the old one added the offset last
    assert abs(seconds - ns / 1e9) <= 2 * math.ulp(seconds)


@given(docker_stamps(utc_only=True))
@settings(max_examples=200, deadline=None)
def test_in_utc_it_gives_the_very_same_floats(stamp):
    assert docker_time(stamp) == old_agent_time(stamp) == old_docker_epoch(stamp)


def test_nine_digits_z_offsets_and_never():
    assert rfc3339_ns("2024-05-01T12:00:00.123456789Z") == 1714564800_123456789
    assert rfc3339_ns("2024-05-01T12:00:00.5Z") == 1714564800_500000000
    assert docker_time("2024-05-01T14:00:00+02:00") == docker_time("2024-05-01T12:00:00Z") == 1714564800
    assert docker_time("2024-05-01T10:30:00.25-01:30") == 1714564800.25
    for never in ("0001-01-01T00:00:00Z", "", None):
        assert docker_time(never) is None and old_agent_time(never) is None and old_docker_epoch(never) is None
    assert rfc3339_ns("0001-01-01T00:00:00Z") == old_logfollow_ns("0001-01-01T00:00:00Z x")[0]


@given(st.one_of(st.text(max_size=60), docker_stamps().map(lambda s: s[:-1]),
                 docker_stamps().flatmap(lambda s: st.text(max_size=3).map(lambda t: s + t))))
@settings(deadline=None)
def test_anything_else_is_none_and_never_raises(text):
    ns = rfc3339_ns(text)
    assert ns is None or isinstance(ns, int)
    assert (docker_time(text) is None) == (ns is None or int(text[:4]) < 1971)
    for bad in ("2024-13-01T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T12:00:60Z",
                "2024-05-01T12:00:00+24:00", "2024-05-01T12:00:00.1234567890Z", "2024-05-01T12:00:00"):
        assert rfc3339_ns(bad) is None and docker_time(bad) is None
