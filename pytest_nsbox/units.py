"""Parsers for the values that carry units: sizes, rates, durations, percentages, CPUs.

Pure functions with no pytest import, so the marker, ``nsbox_factory``, ``Box`` outside pytest
and the command line all read ``"64M"`` the same way. Each parser is idempotent (what it
returns, fed back, comes back unchanged) because a ``pytest_nsbox_box_spec`` hook may hand an
already parsed spec back for re-validation. Each raises ``ValueError`` whose text is a short
problem (``"not a size"``); ``spec.py`` wraps it into a ``SpecError`` naming key, value, source
and a good example.

Numbers in strings are read as exact decimals, so ``"1.5G"`` is exactly 1610612736 bytes.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = [
    "MAX_RATE",
    "MAX_SIZE",
    "format_duration",
    "format_rate",
    "format_size",
    "parse_cpus",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "parse_size",
]

#: Largest size accepted: cgroup files and the kernel hold sizes in a signed 64-bit number.
MAX_SIZE = 2**63 - 1

#: Largest rate accepted: netem and tbf hold rates in 64-bit byte counters.
MAX_RATE = 2**63 - 1

# An unsigned decimal number with an optional sign (kept so "-1M" gets "must not be
# negative" rather than "not a size"), then an optional unit. No exponents, no "_".
_NUMBER = r"(?P<sign>[-+]?)(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_WITH_UNIT = re.compile(_NUMBER + r"\s*(?P<unit>[^\s0-9.+-]*)")

_PLAIN_UNITS: dict[str, int] = {"": 1}
_PERCENT_UNITS: dict[str, int] = {"": 1, "%": 1}

# Sizes: binary multiples everywhere, as Docker's ``--memory`` does: "64M", "64MB", "64MiB"
# and "64Mi" are all 64 * 1024**2 bytes (so "MB" is binary on purpose; nobody sizes a
# memory limit in powers of ten). A bare number or "b" is bytes.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtpe", 1):
    for _suffix in (_p, _p + "b", _p + "i", _p + "ib"):
        _SIZE_UNITS[_suffix] = 1024**_i

# Rates: exactly tc's table (``tc(8)``, "RATES"; matched case-insensitively as tc does):
# "bit" and a bare number are bits per second, SI prefixes are decimal (kbit = 1000 bit/s),
# IEC prefixes binary (kibit = 1024 bit/s), and "bps" is *bytes* per second.
_RATE_UNITS: dict[str, int] = {"": 1, "bit": 1, "bps": 8}
for _i, _p in enumerate("kmgt", 1):
    _RATE_UNITS[_p + "bit"] = 1000**_i
    _RATE_UNITS[_p + "ibit"] = 1024**_i
    _RATE_UNITS[_p + "bps"] = 8 * 1000**_i
    _RATE_UNITS[_p + "ibps"] = 8 * 1024**_i

# Durations: tc's time units (s, sec, secs, ms, msec, msecs, us, usec, usecs) plus ns, the
# micro signs, and m/min/h for timeouts. A bare number is seconds.
_DURATION_UNITS: dict[str, Decimal] = {}
for _names, _seconds in (
    (("", "s", "sec", "secs"), Decimal(1)),
    (("ms", "msec", "msecs"), Decimal("0.001")),
    (("us", "usec", "usecs", "\u00b5s", "\u03bcs"), Decimal("0.000001")),
    (("ns", "nsec", "nsecs"), Decimal("0.000000001")),
    (("m", "min"), Decimal(60)),
    (("h",), Decimal(3600)),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _seconds


def _amount(v: object, units: dict[str, int] | dict[str, Decimal], what: str) -> Decimal:
    """The exact value of a number (int, float) or of ``"<number><unit>"`` times the unit.

    Raises ``ValueError(what)`` for anything else, bool and NaN/infinity included. Exact
    decimals keep ``"1.5G"`` exact and never overflow (``10**400`` is just "too large").
    """
    if isinstance(v, str):
        m = _WITH_UNIT.fullmatch(v.strip())
        unit = m["unit"].lower() if m else ""
        if m is None or unit not in units:
            raise ValueError(what)
        number = Decimal(m["num"])
        try:
            return (-number if m["sign"] == "-" else number) * units[unit]
        except ArithmeticError:  # more than a million digits: decimal.Overflow
            raise ValueError("too large") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        # bool is an int to Python, never a size to a user
        try:
            number = Decimal(v)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            raise ValueError("too large") from None
        if not number.is_finite():
            raise ValueError(what)
        return number
    raise ValueError(what)


def parse_size(v: object) -> int:
    """Bytes from an int (bytes), a float (rounded down) or a string like ``"64M"``, ``"1.5G"``.

    Units are binary (k = 1024) whatever their spelling: ``k``/``K``, ``kb``/``KB``,
    ``ki``/``KiB``; ``b`` or none is bytes. A fractional byte count is rounded down.
    """
    amount = _amount(v, _SIZE_UNITS, "not a size")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_SIZE:
        raise ValueError("too large")
    return math.floor(amount)


def format_size(n: int) -> str:
    """``67108864`` -> ``"64.0 MiB"``: binary units, one decimal, for reports."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    unit = "B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if abs(round(value, 1)) < 1024:
            break
    return f"{value:.1f} {unit}"


def parse_rate(v: object) -> int:
    """Bits per second from an int (bit/s) or a tc-style string: ``"1mbit"``, ``"10mbps"``.

    As in tc: ``kbit``/``mbit``/``gbit``/``tbit`` are decimal (1mbit = 10**6 bit/s),
    ``kibit``... binary, and ``bps``/``kbps``/``mbps``... are *bytes* per second (times 8).
    A bare number is bits per second. Fractions of a bit are rounded down.
    """
    amount = _amount(v, _RATE_UNITS, "not a rate")
    if amount <= 0:
        raise ValueError("must be more than 0")
    if amount < 1:
        raise ValueError("must be at least 1bit")
    if amount > MAX_RATE:
        raise ValueError("too large")
    return math.floor(amount)


def format_rate(bits: int) -> str:
    """``1500000`` -> ``"1.5mbit"``: tc's own spelling, so it can be pasted back."""
    for unit, scale in (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale:
            return f"{bits / scale:.6g}{unit}"
    return f"{bits}bit"


def parse_duration(v: object) -> float:
    """Seconds from an int/float (seconds) or a string: ``"50ms"``, ``"1.5s"``, ``"200us"``.

    A bare number is seconds everywhere, also for ``latency`` and ``jitter`` (``latency=50``
    is fifty seconds; write ``"50ms"``). Units: ns, us (µs, usec), ms (msec), s (sec), m
    (min), h.
    """
    amount = _amount(v, _DURATION_UNITS, "not a duration")
    if amount < 0:
        raise ValueError("must not be negative")
    seconds = float(amount)
    if not math.isfinite(seconds):
        raise ValueError("too large")
    return seconds


def format_duration(seconds: float) -> str:
    """``0.05`` -> ``"50ms"``: the largest unit that keeps the number at least 1."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.6g}{unit}"
    return f"{seconds / 1e-9:.6g}ns"


def parse_percent(v: object) -> float:
    """A percentage 0..100 from ``"1%"``, ``"0.5%"``, ``"1"`` or a number (already percent).

    ``0.01`` is one hundredth of a percent, not one percent: numbers are never fractions.
    """
    amount = _amount(v, _PERCENT_UNITS, "not a percentage")
    if not 0 <= amount <= 100:
        raise ValueError("must be between 0% and 100%")
    return float(amount)


def parse_cpus(v: object) -> float:
    """CPU cores as a float (0.5 = half a core) from a number or a numeric string ``"0.5"``.

    No upper limit but a finite float: a cgroup quota may exceed the number of cores.
    """
    amount = _amount(v, _PLAIN_UNITS, "not a number of CPUs")
    if amount <= 0:
        raise ValueError("must be more than 0")
    cpus = float(amount)
    if not math.isfinite(cpus):
        raise ValueError("too large")
    return cpus
