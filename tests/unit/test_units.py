"""The unit parsers: good values, bad values with their exact problem text, idempotence."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_nsbox.units import (
    MAX_SIZE,
    cpu_quota,
    duration_units,
    exact,
    format_duration,
    format_number,
    format_rate,
    format_size,
    nano_cpus,
    parse_cpus,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
    percent_u32,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3


# -- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (0, 0),
    (100, 100),
    ("100", 100),
    ("1b", 1),
    ("1B", 1),
    ("512k", 512 * KiB),
    ("512K", 512 * KiB),
    ("512kb", 512 * KiB),
    ("64M", 64 * MiB),
    ("64m", 64 * MiB),
    ("64MB", 64 * MiB),  # "MB" is binary on purpose, as in Docker
    ("64MiB", 64 * MiB),
    ("64Mi", 64 * MiB),
    (" 64 M ", 64 * MiB),
    ("1.5G", 1610612736),
    ("1.5g", 1610612736),
    ("2T", 2 * 1024**4),
    ("1P", 1024**5),
    ("1E", 1024**6),
    (".5k", 512),
    ("1.", 1),
    ("0.1k", 102),  # 102.4 bytes, rounded down
    (1.9, 1),
    (64.0 * MiB, 64 * MiB),
    ("+1k", 1024),
])
def test_parse_size_good(value: object, expected: int) -> None:
    result = parse_size(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(("value", "problem"), [
    ("lots", "not a size"),
    ("", "not a size"),
    ("   ", "not a size"),
    ("M", "not a size"),
    ("64X", "not a size"),
    ("64 M B", "not a size"),
    ("1e6", "not a size"),
    ("nan", "not a size"),
    ("1,5G", "not a size"),
    ("64%", "not a size"),
    (True, "not a size"),
    (False, "not a size"),
    (None, "not a size"),
    ([64], "not a size"),
    (b"64M", "not a size"),
    (math.nan, "not a size"),
    (math.inf, "not a size"),
    (-1, "must not be negative"),
    (-0.5, "must not be negative"),
    ("-1M", "must not be negative"),
    ("8E", "too large"),
    (2**63, "too large"),
])
def test_parse_size_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == problem


def test_parse_size_limits() -> None:
    assert parse_size(MAX_SIZE) == MAX_SIZE
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_parse_size_idempotent_on_ints(n: int) -> None:
    assert parse_size(n) == n
    assert parse_size(parse_size(n)) == n


@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(
    [("", 1), ("b", 1), ("k", KiB), ("KiB", KiB), ("M", MiB), ("mb", MiB), ("G", GiB)]))
def test_parse_size_unit_multiplies(n: int, unit: tuple[str, int]) -> None:
    suffix, scale = unit
    assert parse_size(f"{n}{suffix}") == n * scale


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (64 * MiB, "64.0 MiB"),
    (MiB - 1, "1.0 MiB"),  # 1023.999 KiB would print as "1024.0 KiB"
    (1610612736, "1.5 GiB"),
    (5 * 1024**4, "5.0 TiB"),
    (MAX_SIZE, "8.0 EiB"),
])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_size_reads_like_the_report() -> None:
    limit = parse_size("64M")
    assert f"memory limit {format_size(limit)} reached (peak {format_size(limit)})" == (
        "memory limit 64.0 MiB reached (peak 64.0 MiB)")


# -- rates ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (1, 1),
    (1_000_000, 1_000_000),
    ("100", 100),
    ("100bit", 100),
    ("500kbit", 500_000),
    ("1mbit", 1_000_000),
    ("1Mbit", 1_000_000),
    ("1.5mbit", 1_500_000),
    ("1gbit", 1_000_000_000),
    ("2tbit", 2 * 10**12),
    ("1kibit", 1024),
    ("1mibit", 1024**2),
    ("1bps", 8),
    ("10kbps", 80_000),
    ("10mbps", 80_000_000),
    ("10MBps", 80_000_000),
    ("1gbps", 8 * 10**9),
    ("1kibps", 8 * 1024),
    (" 1 mbit ", 1_000_000),
    (2.7, 2),
])
def test_parse_rate_good(value: object, expected: int) -> None:
    result = parse_rate(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(("value", "problem"), [
    ("fast", "not a rate"),
    ("", "not a rate"),
    ("1m", "not a rate"),  # tc has no bare "m": mbit or mbps
    ("1mb", "not a rate"),
    ("1 mbit/s", "not a rate"),
    (True, "not a rate"),
    (None, "not a rate"),
    (math.nan, "not a rate"),
    (math.inf, "not a rate"),
    (0, "must be more than 0"),
    (-1, "must be more than 0"),
    ("0mbit", "must be more than 0"),
    ("-1mbit", "must be more than 0"),
    (0.5, "must be at least 1bit"),
    ("0.5bit", "must be at least 1bit"),
])
def test_parse_rate_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rate(value)
    assert str(info.value) == problem


@given(st.integers(min_value=1, max_value=10**15))
def test_parse_rate_idempotent_and_format_round_trips(bits: int) -> None:
    assert parse_rate(parse_rate(bits)) == bits
    text = format_rate(bits)
    assert parse_rate(text) == bits  # exact: "1.234567mbit", never "1.23457mbit"


@pytest.mark.parametrize(("bits", "text"), [
    (100, "100bit"),
    (500_000, "500kbit"),
    (1_000_000, "1mbit"),
    (1_500_000, "1.5mbit"),
    (10**9, "1gbit"),
])
def test_format_rate(bits: int, text: str) -> None:
    assert format_rate(bits) == text


# -- durations --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (0, 0.0),
    (30, 30.0),
    (1.5, 1.5),
    ("1", 1.0),
    ("1s", 1.0),
    ("1.5s", 1.5),
    ("1sec", 1.0),
    ("50ms", 0.05),
    ("50msec", 0.05),
    ("200us", 0.0002),
    ("200usec", 0.0002),
    ("200\u00b5s", 0.0002),
    ("200\u03bcs", 0.0002),
    ("100ns", 1e-7),
    ("2m", 120.0),
    ("2min", 120.0),
    ("1h", 3600.0),
    (" 10 MS ", 0.01),
])
def test_parse_duration_good(value: object, expected: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(expected, rel=1e-12, abs=0)
    assert type(result) is float


@pytest.mark.parametrize(("value", "problem"), [
    ("soon", "not a duration"),
    ("", "not a duration"),
    ("50 ms later", "not a duration"),
    ("1d", "not a duration"),
    (True, "not a duration"),
    (None, "not a duration"),
    ([1], "not a duration"),
    (math.nan, "not a duration"),
    (math.inf, "not a duration"),
    (-math.inf, "not a duration"),
    (-1, "must not be negative"),
    ("-50ms", "must not be negative"),
    ("9" * 400, "too large"),
])
def test_parse_duration_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == problem


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_parse_duration_idempotent(seconds: float) -> None:
    assert parse_duration(seconds) == seconds
    assert parse_duration(parse_duration(seconds)) == seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (30.0, "30s"),
    (1.5, "1.5s"),
    (0.05, "50ms"),
    (0.0002, "200us"),
    (1e-7, "100ns"),
    (1.005, "1.005s"),
    (0.0000015, "1.5us"),
    (86400.000001, "86400.000001s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# -- percentages ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("1%", 1.0),
    ("0.5%", 0.5),
    (" 0.5 % ", 0.5),
    ("100%", 100.0),
    ("0%", 0.0),
    ("1", 1.0),
    (1, 1.0),
    (0.5, 0.5),  # a number is already a percentage, never a fraction
    (100, 100.0),
])
def test_parse_percent_good(value: object, expected: float) -> None:
    result = parse_percent(value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(("value", "problem"), [
    ("some", "not a percentage"),
    ("", "not a percentage"),
    ("%", "not a percentage"),
    ("1%%", "not a percentage"),
    (True, "not a percentage"),
    (None, "not a percentage"),
    (math.nan, "not a percentage"),
    (math.inf, "not a percentage"),
    (-1, "must be between 0% and 100%"),
    ("-0.1%", "must be between 0% and 100%"),
    ("100.5%", "must be between 0% and 100%"),
    (101, "must be between 0% and 100%"),
])
def test_parse_percent_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_percent(value)
    assert str(info.value) == problem


@given(st.floats(min_value=0, max_value=100))
def test_parse_percent_idempotent(value: float) -> None:
    assert parse_percent(parse_percent(value)) == value


# -- cpus -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (0.5, 0.5),
    (1, 1.0),
    (64, 64.0),
    (1000, 1000.0),  # no upper limit: a quota may exceed the cores
    ("0.5", 0.5),
    (".25", 0.25),
])
def test_parse_cpus_good(value: object, expected: float) -> None:
    result = parse_cpus(value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(("value", "problem"), [
    ("half", "not a number of CPUs"),
    ("", "not a number of CPUs"),
    ("nan", "not a number of CPUs"),
    ("inf", "not a number of CPUs"),
    ("50%", "not a number of CPUs"),
    (True, "not a number of CPUs"),
    (None, "not a number of CPUs"),
    (math.nan, "not a number of CPUs"),
    (math.inf, "not a number of CPUs"),
    (0, "must be more than 0"),
    (0.0, "must be more than 0"),
    (-1, "must be more than 0"),
    ("-0.5", "must be more than 0"),
    # docker/cli ParseCPUs: big.Rat.SetString refuses spaces around the number
    (" 2 ", "not a number of CPUs: spaces around it are not part of a number (docker's "
            "--cpus refuses them too); use '2'"),
])
def test_parse_cpus_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpus(value)
    assert str(info.value) == problem


@given(st.integers(min_value=1, max_value=10**14))
def test_parse_cpus_idempotent(nanos: int) -> None:
    value = nanos / 10**9
    assert parse_cpus(value) == value
    assert parse_cpus(parse_cpus(value)) == value
    assert nano_cpus(parse_cpus(value)) == nanos
    assert parse_cpus(str(value)) == value


def test_units_does_not_import_pytest() -> None:
    from pytest_nsbox import units

    assert "pytest" not in vars(units)
    source = Path(units.__file__).read_text(encoding="utf-8")
    assert "import pytest" not in source


ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
    st.lists(st.integers()), st.dictionaries(st.text(), st.integers()),
    st.from_regex(r"\A[-+]?[0-9]{0,30}(\.[0-9]{0,30})?\s*[a-zA-Z%µ]{0,6}\Z"),
)
PARSERS = [parse_size, parse_rate, parse_duration, parse_percent, parse_cpus]


@pytest.mark.parametrize("parser", PARSERS)
@given(value=ANYTHING)
def test_parsers_raise_only_value_error_and_are_idempotent(parser: Any, value: object) -> None:
    try:
        parsed = parser(value)
    except ValueError as exc:
        assert type(exc) is ValueError
        assert str(exc)
    else:
        assert parser(parsed) == parsed


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("value", [10**5000, -(10**5000), "9" * 2_000_000 + "s", 1e308 * 10],
                         ids=["huge-int", "huge-negative-int", "million-digits", "float-inf"])
def test_parsers_survive_absurd_numbers(parser: Any, value: object) -> None:
    with pytest.raises(ValueError):
        parser(value)


# -- exact conversions: values that floats round badly ---------------------------------------
#
# Expected values are worked out by hand from each reference's rule on the exact decimal the
# user wrote; the float arithmetic each line replaces gives the number in the comment.

@pytest.mark.parametrize(("cpus", "quota"), [
    (0.29, 29000),       # int(0.29 * 100000) == 28999
    ("0.29", 29000),
    (0.57, 57000),       # 56999
    (0.58, 58000),       # 57999
    (1.1, 110000),
    (1.13, 113000),      # 112999
    (2.3, 230000),
    (2.01, 201000),      # 200999
    ("1/2", 50000),      # big.Rat fraction form
    ("3/4", 75000),
    ("29e-2", 29000),    # big.Rat exponent form
    (0.000123456, 12),   # 123456 nano-CPUs * 100000 // 1e9 truncates
    (64, 6400000),
])
def test_cpu_quota_is_docker_nanocpus_times_period(cpus: object, quota: int) -> None:
    """docker/cli opts/opts.go ``ParseCPUs`` reads ``--cpus`` as an exact big.Rat times 1e9
    (NanoCPUs); moby daemon/daemon_unix.go ``getCPUResources`` sets the CFS quota to
    ``NanoCPUs * 100000 / 1e9`` in int64 arithmetic. A float is read as its repr."""
    assert cpu_quota(parse_cpus(cpus), 100_000) == quota


@pytest.mark.parametrize(("cpus", "nanos"), [
    (0.29, 290_000_000), ("0.29", 290_000_000), (1.1, 1_100_000_000),
    (0.123456789, 123_456_789), ("1.000000001", 1_000_000_001), ("7/8", 875_000_000),
])
def test_nano_cpus_are_exact(cpus: object, nanos: int) -> None:
    """docker/cli opts/opts.go ``ParseCPUs``: ``nano := cpu.Mul(cpu, big.NewRat(1e9, 1))``."""
    assert nano_cpus(parse_cpus(cpus)) == nanos


@pytest.mark.parametrize("cpus", ["0.0000000001", 1e-10, 0.1 + 0.2, "1/3", "1.0000000005"])
def test_cpus_finer_than_a_nano_cpu_are_too_precise(cpus: object) -> None:
    """docker/cli opts/opts.go ``ParseCPUs``: ``if !nano.IsInt()`` it answers "value is too
    precise" (0.1 + 0.2 is 0.30000000000000004 to Python, 17 decimal places)."""
    with pytest.raises(ValueError, match="too precise: at most 9 decimal places"):
        parse_cpus(cpus)


@given(st.integers(min_value=1, max_value=10**14), st.sampled_from([100_000, 50_000, 1_000_000]))
def test_cpu_quota_matches_the_rational_rule(nanos: int, period: int) -> None:
    """moby daemon/daemon_unix.go: quota = NanoCPUs * period / 1e9 (integer division), with
    NanoCPUs the exact decimal written (docker/cli ``ParseCPUs``)."""
    text = str(Decimal(nanos).scaleb(-9))
    expected = int(Fraction(text) * 10**9) * period // 10**9
    assert cpu_quota(parse_cpus(text), period) == expected
    assert cpu_quota(parse_cpus(float(text)), period) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("1.1G", 1181116006),     # 1.1 * 2**30 = 1181116006.4, truncated
    ("1.1g", 1181116006),
    ("0.1k", 102),            # 102.4
    ("0.3k", 307),            # 307.2
    ("2.3M", 2411724),        # 2411724.8
    ("0.57G", 612032839),     # 612032839.68
    ("33.3K", 34099),         # 34099.2
    ("0.0009765625k", 1),     # exactly 1 byte (1/1024 k)
    ("1.9999999999999999999999999999999k", 2047),  # 31 digits: past Decimal's default 28
    (0.29 * 1024, 296),       # a float is its repr: 296.96
    (9007199254740993, 9007199254740993),  # 2**53 + 1: a float would make it ...992
    ("9007199254740993", 9007199254740993),
])
def test_sizes_are_exact(value: object, expected: int) -> None:
    """go-units ``RAMInBytes`` (docker run --memory): the number times the binary unit,
    truncated toward zero (``int64(size)``); here on the exact decimal."""
    assert parse_size(value) == expected


@pytest.mark.parametrize(("value", "bits", "tbf_bytes"), [
    ("0.3mbit", 300_000, 37_500),
    ("2.01mbit", 2_010_000, 251_250),   # tc's doubles: 2.01 * 1e6 / 8 -> 251249
    ("4.1mbit", 4_100_000, 512_500),    # 512499
    ("1.1kbit", 1_100, 137),            # 137.5 bytes/s, truncated
    ("0.57gbit", 570_000_000, 71_250_000),
    ("1.5kibit", 1_536, 192),
    ("2.3mbps", 18_400_000, 2_300_000),
])
def test_rates_are_exact(value: str, bits: int, tbf_bytes: int) -> None:
    """iproute2 tc/tc_util.c ``get_rate64``: the number times the suffix's scale, divided by
    8 and truncated (``*rate = bps``); here on the exact decimal."""
    from pytest_nsbox.network.shaping import tbf_params

    assert parse_rate(value) == bits
    assert tbf_params(parse_rate(value))["rate"] == tbf_bytes


@pytest.mark.parametrize(("value", "usec"), [
    ("1.005s", 1_005_000),    # tc's double: 1.005 * 1e6 truncates to 1004999
    ("1.001s", 1_001_000),
    ("1.019s", 1_019_000),
    ("0.3s", 300_000),
    ("2.3ms", 2_300),
    ("0.0015ms", 1),          # 1.5 us, truncated
    ("100ns", 0),
    ("50ms", 50_000),
    (1.005, 1_005_000),       # a float is its repr
    (0.1 + 0.2, 300_000),     # 0.30000000000000004 s: 300000.00000000004 us
])
def test_durations_in_microseconds_are_exact(value: object, usec: int) -> None:
    """iproute2 tc ``get_time``: seconds times 1e6 microseconds, truncated (``*time = t``)."""
    assert duration_units(parse_duration(value), 10**6) == usec


@pytest.mark.parametrize(("value", "u32"), [
    ("33.3%", 1430224109),    # 0.333 * 4294967295 = 1430224109.235
    ("1%", 42949673),         # 42949672.95: rint rounds up; truncating gives 42949672
    ("0.2%", 8589935),        # 8589934.59
    ("50%", 2147483648),      # 2147483647.5: half to even
    ("0.5%", 21474836),       # 21474836.475
    ("100%", 4294967295),
    ("0%", 0),
    (2.3, 98784248),          # 98784247.785
])
def test_percentages_are_netem_u32_exactly(value: object, u32: int) -> None:
    """iproute2 tc/q_netem.c ``set_percent``: ``rint(per * UINT32_MAX)`` with ``per`` the
    percentage over 100; rint rounds half to even."""
    assert percent_u32(parse_percent(value)) == u32


@pytest.mark.parametrize(("value", "text"), [
    (0.29, "0.29"), (2.0, "2"), (1e-07, "0.0000001"), (33.3, "33.3"), (1e16, "10000000000000000"),
])
def test_format_number_shows_what_was_written(value: float, text: str) -> None:
    """Python's float repr (the shortest text that reads back the same float, PEP 3101 /
    "Floating Point Arithmetic" in the tutorial) is the decimal a user wrote."""
    assert format_number(value) == text
    assert exact(value) == Decimal(text)


def test_exact_reads_a_float_as_its_repr() -> None:
    """docker/cli reads --cpus from its text; a Python float's text is its repr."""
    assert exact(0.29) == Decimal("0.29") != Decimal(0.29)
    assert exact(7) == 7
    with pytest.raises(ValueError):
        exact(math.nan)
