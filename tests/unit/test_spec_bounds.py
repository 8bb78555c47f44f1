"""The bounds Docker puts on a box's resources, and where a bad build arg came from.

Each test cites the reference its values come from: moby ``daemon/daemon_unix.go``
(``linuxMinMemory``, ``verifyPlatformContainerResources``), moby ``pkg/sysinfo``
(``NumCPU``), docker/cli ``opts/opts.go`` ``ParseCPUs`` (Go's ``big.Rat.SetString``) and
docker/cli ``opts/env.go`` ``ValidateEnv``.
"""
from __future__ import annotations

import os

import pytest

from pytest_nsbox.errors import ImageError, SpecError
from pytest_nsbox.images.build import (
    CLI_BUILD_ARG,
    INI_BUILD_ARGS,
    PYTEST_BUILD_ARG,
    collect_build_args,
)
from pytest_nsbox.kernel.proc import available_cpus
from pytest_nsbox.model.spec import MIN_MEMORY, BoxSpec, check_cpus_available
from pytest_nsbox.units import parse_cpus

MiB = 1024 * 1024


def spec_error(kwargs: dict[str, object], source: str = "sandbox") -> str:
    with pytest.raises(SpecError) as info:
        BoxSpec.from_kwargs(kwargs, source=source)
    return str(info.value)


# -- memory ------------------------------------------------------------------------------

def test_min_memory_is_dockers() -> None:
    """moby daemon/daemon_unix.go: ``linuxMinMemory = 6291456`` (6 MiB)."""
    assert MIN_MEMORY == 6291456 == 6 * MiB


@pytest.mark.parametrize("memory", ["4096", "512k", 4096, 1, MIN_MEMORY - 1, "5.99M", "6143k"])
def test_memory_below_dockers_minimum_is_a_spec_error(memory: object) -> None:
    """moby daemon/daemon_unix.go ``verifyPlatformContainerResources``: ``Memory != 0 &&
    Memory < linuxMinMemory`` is refused before anything starts ("Minimum memory limit
    allowed is 6MB"). The tester's inputs: ``memory="4096"`` (init died during setup) and
    ``"512k"`` (returncode 126)."""
    message = spec_error({"memory": memory})
    assert message == (
        f"sandbox(memory={memory!r}): less than 6M (6291456 bytes), the least a box can start "
        f"in (Docker: \"Minimum memory limit allowed is 6MB\"); use e.g. '64M'")


def test_memory_bounds_name_their_source() -> None:
    """The same rule for ``Box(...)`` and an ini default (one validator, runc's pattern)."""
    assert spec_error({"memory": "1M"}, source="Box").startswith("Box(memory='1M'): less than 6M")
    with pytest.raises(SpecError, match=r"^ini\(nsbox_memory='1M'\): less than 6M"):
        BoxSpec.from_kwargs({}, defaults={"memory": "1M"})


@pytest.mark.parametrize(("memory", "size"), [("6M", 6 * MiB), (MIN_MEMORY, MIN_MEMORY),
                                             ("6144k", 6 * MiB), ("1G", 1024 * MiB)])
def test_memory_at_or_above_the_minimum_is_accepted(memory: object, size: int) -> None:
    """moby: exactly ``linuxMinMemory`` is allowed (the test is ``<``)."""
    assert BoxSpec.from_kwargs({"memory": memory}).memory == size


def test_memory_zero_still_says_more_than_zero() -> None:
    """0 means "no limit" to Docker; to us ``None`` does, and 0 keeps its own message."""
    assert spec_error({"memory": 0}) == "sandbox(memory=0): must be more than 0; use e.g. '64M'"


# -- cpus: the lower bound (the spec) -----------------------------------------------------

@pytest.mark.parametrize("cpus", [0.001, "1e-9", 1e-9, 0.009999999, "1/200", "0.0099"])
def test_cpus_below_a_hundredth_are_a_spec_error(cpus: object) -> None:
    """moby daemon/daemon_unix.go: "Range of CPUs is from 0.01 to N.00"; a quota under
    1000 us per 100000 us period is below the kernel's CFS minimum (1 ms,
    Documentation/scheduler/sched-bwc.rst). The tester saw ``cpus=0.001`` and ``1e-9``
    turned silently into quota 1000."""
    message = spec_error({"cpus": cpus})
    assert message.startswith(f"sandbox(cpus={cpus!r}): less than 0.01; the range of CPUs is "
                              f"from 0.01 to ")
    assert message.endswith("; use e.g. 0.5")


@pytest.mark.parametrize(("cpus", "parsed"), [(0.01, 0.01), ("1/100", 0.01), ("1e-2", 0.01),
                                              (2, 2.0)])
def test_cpus_from_a_hundredth_are_accepted(cpus: object, parsed: float) -> None:
    """moby: 0.01 is the bottom of Docker's range, included."""
    assert BoxSpec.from_kwargs({"cpus": cpus}).cpus == parsed


@pytest.mark.parametrize("text", ["1.5 ", " 1.5", "\t2", "2\n", " 1/2 "])
def test_cpus_with_spaces_around_are_refused_as_big_rat_does(text: str) -> None:
    """docker/cli opts/opts.go ``ParseCPUs`` hands the text to Go's ``big.Rat.SetString``,
    which refuses any space around the number ("failed to parse 1.5  as a rational
    number"). The message says what to write instead."""
    with pytest.raises(ValueError) as info:
        parse_cpus(text)
    assert str(info.value) == (f"not a number of CPUs: spaces around it are not part of a "
                               f"number (docker's --cpus refuses them too); use "
                               f"{text.strip()!r}")
    assert spec_error({"cpus": text}).startswith(f"sandbox(cpus={text!r}): not a number of CPUs")


# -- cpus: the upper bound (where the box starts) ----------------------------------------

def test_cpus_above_the_hosts_count_get_dockers_sentence() -> None:
    """moby daemon/daemon_unix.go ``verifyPlatformContainerResources``: ``NanoCPUs >
    NumCPU() * 1e9`` gives "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs
    available" (the tester's ``cpus=1000`` on a 2-CPU host)."""
    with pytest.raises(SpecError) as info:
        check_cpus_available(1000.0, 2, "Box")
    assert str(info.value) == (
        "Box(cpus=1000.0): more than this host's 2 CPUs; the range of CPUs is from 0.01 to "
        "2.00, as there are only 2 CPUs available (as Docker's --cpus); use e.g. 0.5")
    with pytest.raises(SpecError, match=r"from 0\.01 to 4\.00, as there are only 4 CPUs"):
        check_cpus_available(parse_cpus("4.000000001"), 4, "spec")


@pytest.mark.parametrize(("cpus", "available"), [(None, 1), (2.0, 2), (0.01, 1), (1.5, 2)])
def test_cpus_up_to_the_hosts_count_pass(cpus: float | None, available: int) -> None:
    """moby: exactly NumCPU CPUs is allowed (the test is ``>``); no limit checks nothing."""
    check_cpus_available(cpus, available, "Box")


def test_available_cpus_is_the_affinity_count() -> None:
    """moby pkg/sysinfo/numcpu_linux.go ``NumCPU``: the count of the process's affinity
    mask (``sched_getaffinity``), else ``runtime.NumCPU``."""
    assert available_cpus() == len(os.sched_getaffinity(0)) >= 1


# -- build args: where a bad one came from -----------------------------------------------

@pytest.mark.parametrize(("option", "text"), [
    (PYTEST_BUILD_ARG, "=x"), (PYTEST_BUILD_ARG, ""), (PYTEST_BUILD_ARG, " =x"),
    (CLI_BUILD_ARG, "=x"), (CLI_BUILD_ARG, ""),
])
def test_an_empty_build_arg_name_names_its_option(option: str, text: str) -> None:
    """docker/cli opts/env.go ``ValidateEnv`` (what ``--build-arg`` uses): an empty name is
    "invalid environment variable", ``--build-arg ''`` included. The error names the option
    the user typed: ``--nsbox-build-arg`` for pytest, ``images build --build-arg`` for the
    command line (the tester saw ``--build-arg`` for a pytest option)."""
    with pytest.raises(ImageError) as info:
        collect_build_args([], ["A=1", text], option)
    assert str(info.value) == (f"{option} {text!r}: not KEY=VALUE (the name is empty); "
                               f"use e.g. VERSION=1.2")


def test_an_empty_ini_build_arg_name_names_the_ini_option() -> None:
    """docker/cli ``ValidateEnv`` for each line of ini ``nsbox_build_args``; blank lines
    are no argument (pytest's ``linelist`` drops them too)."""
    assert INI_BUILD_ARGS == "ini nsbox_build_args"
    with pytest.raises(ImageError, match=r"^ini nsbox_build_args '=bad': not KEY=VALUE"):
        collect_build_args(["A=1", "  ", "=bad"], [])


def test_build_args_follow_validate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker/cli opts/env.go ``ValidateEnv``: ``K=`` is an empty value, ``K`` alone takes
    the environment's value (dropped when unset); the command line wins over the ini."""
    monkeypatch.setenv("FROMENV", "env-value")
    monkeypatch.delenv("UNSET_ARG", raising=False)
    got = collect_build_args(["A=ini", "B=ini"], ["B=cli", "E=", "FROMENV", "UNSET_ARG"])
    assert got == {"A": "ini", "B": "cli", "E": "", "FROMENV": "env-value"}
