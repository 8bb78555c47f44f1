"""The unit parsers: good values, bad values with their exact problem text, idempotence."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_nsbox.units import (
    MAX_SIZE,
    format_duration,
    format_rate,
    format_size,
    parse_cpus,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
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
    assert parse_rate(text) == pytest.approx(bits, rel=1e-5)


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
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


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
    (" 2 ", 2.0),
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
])
def test_parse_cpus_bad(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpus(value)
    assert str(info.value) == problem


@given(st.floats(min_value=1e-6, max_value=1e6))
def test_parse_cpus_idempotent(value: float) -> None:
    assert parse_cpus(parse_cpus(value)) == value


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
