"""Parsers and exact conversions for the values that carry units: sizes, rates, durations,
percentages, CPUs.

Pure functions with no pytest import, so the marker, ``nsbox_factory``, ``Box`` outside pytest
and the command line all read ``"64M"`` the same way. Each parser is idempotent (what it
returns, fed back, comes back unchanged) because a ``pytest_nsbox_box_spec`` hook may hand an
already parsed spec back for re-validation. Each raises ``ValueError`` whose text is a short
problem (``"not a size"``); ``spec.py`` wraps it into a ``SpecError`` naming key, value, source
and a good example.

Every number is exact decimal arithmetic, never a float multiplied: a string is read as the
decimal it spells (``"1.1G"`` is exactly 1181116006.4 bytes, rounded down as Docker does), a
Python float as the decimal its ``repr`` shows (``cpus=0.29`` is 29/100 of a core, as the
user wrote it, not 0.28999999999999998). The conversions to the kernel's integer units
(``cpu_quota``, ``duration_units``, ``percent_u32``) work on those decimals too, with the
rounding rule of the tool that defines them: docker/cli and moby for CPUs, iproute2's tc for
times, rates and percentages, go-units (``RAMInBytes``) for sizes.
"""
from __future__ import annotations

import math
import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal

__all__ = [
    "MAX_NANO_CPUS",
    "MAX_RATE",
    "MAX_SIZE",
    "cpu_quota",
    "duration_units",
    "exact",
    "format_duration",
    "format_number",
    "format_rate",
    "format_size",
    "nano_cpus",
    "parse_cpus",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "parse_size",
    "percent_u32",
]

#: Largest size accepted: cgroup files and the kernel hold sizes in a signed 64-bit number.
MAX_SIZE = 2**63 - 1

#: Largest rate accepted: netem and tbf hold rates in 64-bit byte counters.
MAX_RATE = 2**63 - 1

#: Largest CPU count, in nano-CPUs: docker/cli's ``opts.NanoCPUs`` is an int64.
MAX_NANO_CPUS = 2**63 - 1

#: netem's probabilities are fractions of ``UINT32_MAX`` (iproute2 tc/q_netem.c).
_U32_MAX = 2**32 - 1

# Arithmetic that never rounds: products and sums of finite decimals are exact at MAX_PREC
# (libmpdec sizes the result to its digits), and no exponent overflows.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
# A number whose first digit lies this far before the point is "too large" for every unit
# here (the largest is a float duration, about 1.8e308 seconds); checked before any
# arithmetic so "9" * 2_000_000 costs nothing.
_MAX_ADJUSTED = 330

# An unsigned decimal number with an optional sign (kept so "-1M" gets "must not be
# negative" rather than "not a size"), then an optional unit. No exponents, no "_".
_NUMBER = r"(?P<sign>[-+]?)(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_WITH_UNIT = re.compile(_NUMBER + r"\s*(?P<unit>[^\s0-9.+-]*)")
# What docker/cli's ParseCPUs takes (Go's big.Rat SetString): a decimal with an optional
# exponent ("1.5", "15e-1"), or a fraction of two integers ("3/2").
_CPUS = re.compile(r"(?P<sign>[-+]?)(?:"
                   r"(?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)"
                   r"|(?P<p>[0-9]+)/(?P<q>[0-9]+))")

_TOO_PRECISE = ("too precise: at most 9 decimal places (a billionth of a CPU), as docker's --cpus; "
                "round it, e.g. round(cpus, 9)")

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


def exact(v: int | float | Decimal) -> Decimal:
    """The decimal a number stands for: an int as it is, a float as its ``repr`` shows it.

    ``exact(0.29) == Decimal("0.29")``, where ``Decimal(0.29)`` would be the binary value
    0.289999999999999980015985556747182272374629974365234375. ``repr`` is the shortest text
    that reads back as the same float, so every decimal of up to 15 significant digits
    comes back exactly as it was written. Raises ``ValueError`` for NaN and infinities.
    """
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, float):
        d = Decimal(repr(v))
    else:
        try:
            d = Decimal(v)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            raise ValueError("too large") from None
    if not d.is_finite():
        raise ValueError("not a finite number")
    return d


def _amount(v: object, units: dict[str, int] | dict[str, Decimal], what: str) -> Decimal:
    """The exact value of a number (int, float) or of ``"<number><unit>"`` times the unit.

    Raises ``ValueError(what)`` for anything else, bool and NaN/infinity included, and
    ``ValueError("too large")`` for a number of absurd size.
    """
    if isinstance(v, str):
        m = _WITH_UNIT.fullmatch(v.strip())
        unit = m["unit"].lower() if m else ""
        if m is None or unit not in units:
            raise ValueError(what)
        number = Decimal(m["num"])  # the constructor is exact, whatever its length
        if number.adjusted() > _MAX_ADJUSTED:
            raise ValueError("too large")
        amount = _EXACT.multiply(number, Decimal(units[unit]))
        return _EXACT.minus(amount) if m["sign"] == "-" else amount
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        # bool is an int to Python, never a size to a user
        try:
            number = exact(v)
        except ValueError as exc:
            raise ValueError("too large" if str(exc) == "too large" else what) from None
        if number.adjusted() > _MAX_ADJUSTED:
            raise ValueError("too large")
        return number
    raise ValueError(what)


def parse_size(v: object) -> int:
    """Bytes from an int (bytes), a float or a string like ``"64M"``, ``"1.5G"``.

    Units are binary (k = 1024) whatever their spelling: ``k``/``K``, ``kb``/``KB``,
    ``ki``/``KiB``; ``b`` or none is bytes. A fractional byte count is truncated, as
    go-units' ``RAMInBytes`` (what ``docker run --memory`` uses) does: ``"0.1k"`` is 102.
    """
    amount = _amount(v, _SIZE_UNITS, "not a size")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_SIZE:
        raise ValueError("too large")
    return int(amount)  # int() of a Decimal truncates, exactly


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
    A bare number is bits per second. Fractions of a bit are truncated, as tc's
    ``get_rate64`` truncates (its bytes per second are then ``bits // 8``).
    """
    amount = _amount(v, _RATE_UNITS, "not a rate")
    if amount <= 0:
        raise ValueError("must be more than 0")
    if amount < 1:
        raise ValueError("must be at least 1bit")
    if amount > MAX_RATE:
        raise ValueError("too large")
    return int(amount)


def _plain(d: Decimal) -> str:
    """A decimal in positional notation, no exponent, no trailing zeros: ``"1.5"``."""
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_rate(bits: int) -> str:
    """``1500000`` -> ``"1.5mbit"``: tc's own spelling, exact, so ``parse_rate`` reads it
    back to the same number."""
    for unit, power in (("tbit", 12), ("gbit", 9), ("mbit", 6), ("kbit", 3)):
        if bits >= 10**power:
            return _plain(Decimal(bits).scaleb(-power, _EXACT)) + unit
    return f"{bits}bit"


def format_number(x: float) -> str:
    """A parsed number as the user wrote it: ``0.29`` -> ``"0.29"``, ``2.0`` -> ``"2"``."""
    return _plain(exact(x))


def parse_duration(v: object) -> float:
    """Seconds from an int/float (seconds) or a string: ``"50ms"``, ``"1.5s"``, ``"200us"``.

    A bare number is seconds everywhere, also for ``latency`` and ``jitter`` (``latency=50``
    is fifty seconds; write ``"50ms"``). Units: ns, us (µs, usec), ms (msec), s (sec), m
    (min), h. The float returned is the one nearest the exact value; ``duration_units``
    turns it back into whole units exactly.
    """
    amount = _amount(v, _DURATION_UNITS, "not a duration")
    if amount < 0:
        raise ValueError("must not be negative")
    seconds = float(amount)
    if not math.isfinite(seconds):
        raise ValueError("too large")
    return seconds


def duration_units(seconds: float, per_second: int) -> int:
    """Whole units (``per_second`` of them a second) in a parsed duration, truncated.

    iproute2's ``get_time`` truncates to its unit (``*time = t``), and so does this, but on
    the exact decimal: ``duration_units(1.005, 10**6)`` is 1005000 microseconds, where
    ``int(1.005 * 1e6)`` is 1004999.
    """
    return int(_EXACT.multiply(exact(seconds), Decimal(per_second)))


def format_duration(seconds: float) -> str:
    """``0.05`` -> ``"50ms"``: the largest unit that keeps the number at least 1; exact, so
    ``parse_duration`` reads it back to the same float."""
    d = exact(seconds)
    if d == 0:
        return "0s"
    for unit, power in (("s", 0), ("ms", 3), ("us", 6)):
        if d >= Decimal(1).scaleb(-power):
            return _plain(d.scaleb(power, _EXACT)) + unit
    return _plain(d.scaleb(9, _EXACT)) + "ns"


def parse_percent(v: object) -> float:
    """A percentage 0..100 from ``"1%"``, ``"0.5%"``, ``"1"`` or a number (already percent).

    ``0.01`` is one hundredth of a percent, not one percent: numbers are never fractions.
    """
    amount = _amount(v, _PERCENT_UNITS, "not a percentage")
    if not 0 <= amount <= 100:
        raise ValueError("must be between 0% and 100%")
    return float(amount)


def percent_u32(percent: float) -> int:
    """A parsed percentage as netem's u32 probability: ``rint(percent / 100 * UINT32_MAX)``.

    iproute2 tc/q_netem.c ``set_percent``; ``rint`` rounds half to even, as here, but on
    the exact decimal: ``"33.3%"`` is 1430224109 (of 4294967295).
    """
    scaled = _EXACT.multiply(exact(percent), Decimal(_U32_MAX)).scaleb(-2, _EXACT)
    return int(scaled.to_integral_value(ROUND_HALF_EVEN, _EXACT))


def _cpus_amount(v: object) -> Decimal:
    """The exact number of cores in ``v``, read as docker/cli's ``ParseCPUs`` reads it."""
    what = "not a number of CPUs"
    if isinstance(v, str):
        # No strip: big.Rat's SetString refuses surrounding spaces ("1.5 "), and so does
        # ``docker run --cpus``.
        m = _CPUS.fullmatch(v)
        if m is None:
            if v != v.strip() and _CPUS.fullmatch(v.strip()):
                raise ValueError(f"{what}: spaces around it are not part of a number "
                                 f"(docker's --cpus refuses them too); use {v.strip()!r}")
            raise ValueError(what)
        if m["num"] is not None:
            number = Decimal(m["num"])
            if number.adjusted() > _MAX_ADJUSTED:
                raise ValueError("too large")
        else:
            p, q = m["p"], m["q"]
            if len(p) > _MAX_ADJUSTED or len(q) > _MAX_ADJUSTED:
                raise ValueError("too large" if len(p) > _MAX_ADJUSTED else "too precise")
            if int(q) == 0:
                raise ValueError(what)  # big.Rat refuses "1/0" too
            nanos, rest = divmod(int(p) * 10**9, int(q))
            if rest:
                raise ValueError(_TOO_PRECISE)
            number = Decimal(nanos).scaleb(-9, _EXACT)
        return _EXACT.minus(number) if m["sign"] == "-" else number
    return _amount(v, _PLAIN_UNITS, what)


def _nanos(amount: Decimal) -> int:
    """``amount`` cores in nano-CPUs; ``ValueError`` unless that is a whole number."""
    digits = "".join(map(str, amount.as_tuple().digits)).rstrip("0") or "0"
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    places = len(amount.as_tuple().digits) - len(digits) + exponent  # power of the last digit
    if digits != "0" and places < -9:
        raise ValueError(_TOO_PRECISE)
    return int(amount.scaleb(9, _EXACT))


def parse_cpus(v: object) -> float:
    """CPU cores as a float (0.5 = half a core) from a number or a string.

    Strings are what ``docker run --cpus`` takes (docker/cli ``opts.ParseCPUs``): a
    decimal, with an exponent if you like (``"0.5"``, ``"5e-1"``), or a fraction
    (``"1/2"``), at most 9 decimal places (the value is a whole number of nano-CPUs;
    finer is "too precise", as Docker says), without surrounding spaces (``"1.5 "`` is
    refused, as Go's ``big.Rat.SetString`` refuses it). A float is read as its ``repr``.
    The bounds of a box's limit are the spec's (``model/spec.py``: at least 0.01) and the
    box's (at most the host's CPUs); here only int64 nano-CPUs.
    """
    amount = _cpus_amount(v)
    if amount <= 0:
        raise ValueError("must be more than 0")
    nanos = _nanos(amount)
    if nanos > MAX_NANO_CPUS:
        raise ValueError("too large")
    cpus = float(amount)
    if nano_cpus(cpus) != nanos:
        # more significant digits than a float holds (a 17-digit count of nano-CPUs)
        raise ValueError("too precise: a float cannot hold it; use fewer digits")
    return cpus


def nano_cpus(cpus: float) -> int:
    """A parsed CPU count in nano-CPUs, exactly: ``nano_cpus(0.29) == 290_000_000``.

    docker/cli ``opts.NanoCPUs``: the count is the exact rational the user wrote, times
    1e9. ``ValueError`` if that is not a whole number (more than 9 decimal places).
    """
    return _nanos(exact(cpus))


def cpu_quota(cpus: float, period_us: int) -> int:
    """The CFS quota (microseconds per ``period_us``) for a parsed CPU count.

    moby ``daemon/daemon_unix.go`` ``getCPUResources``: ``NanoCPUs * period / 1e9`` in
    integer arithmetic, so ``cpus=0.29`` over 100000 us is 29000, not 28999.
    """
    return nano_cpus(cpus) * period_us // 10**9
