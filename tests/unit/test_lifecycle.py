"""``lifecycle.Undo``: every undo step runs, newest first, and every failure is reported.

Written from CPython's ``contextlib.ExitStack`` (Lib/contextlib.py, ``_BaseExitStack``:
callbacks run last in, first out, and every one runs even after one raised) and PEP 654
(``ExceptionGroup``: ``exceptions`` holds them all; ``split``/``derive`` keep the class).
"""
from __future__ import annotations

import pytest

from pytest_nsbox.errors import BoxClosed, BoxError, NsboxError, TeardownError
from pytest_nsbox.lifecycle import Undo


def test_steps_run_newest_first_and_every_failure_is_in_the_group() -> None:
    ran: list[str] = []

    def fail(name: str) -> None:
        ran.append(name)
        raise OSError(f"{name} failed")

    undo = Undo("box 'x'")
    undo.callback(ran.append, "dirs")
    undo.callback(fail, "cgroup")
    undo.callback(ran.append, "pidfd")
    undo.callback(fail, "network")
    with pytest.raises(TeardownError) as info:
        undo.close()
    assert ran == ["network", "pidfd", "cgroup", "dirs"]
    group = info.value
    assert [str(e) for e in group.exceptions] == ["network failed", "cgroup failed"]
    assert isinstance(group, ExceptionGroup) and isinstance(group, BoxError)
    assert str(group) == "teardown of box 'x' incomplete: network failed; cgroup failed"


def test_close_is_idempotent_and_quiet_without_failures() -> None:
    ran: list[int] = []
    undo = Undo("pool")
    undo.callback(ran.append, 1)
    undo.close()
    undo.close()
    assert ran == [1] and undo.closed


def test_a_step_pushed_after_close_runs_at_once_and_says_closed() -> None:
    ran: list[str] = []
    undo = Undo("box 'y'", closed_error=BoxClosed)
    undo.close()
    with pytest.raises(BoxClosed, match="box 'y' is closed"):
        undo.callback(ran.append, "forward")
    assert ran == ["forward"]  # nothing leaks


def test_an_interrupt_is_not_collected_but_the_other_steps_still_run() -> None:
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    undo = Undo("box 'z'")
    undo.callback(ran.append, "first pushed")
    undo.callback(interrupt)
    with pytest.raises(KeyboardInterrupt):
        undo.close()
    assert ran == ["first pushed"]


def test_nested_groups_and_except_star_keep_the_class() -> None:
    inner = TeardownError("teardown of box 'a' incomplete", [OSError("rm failed")])
    outer = TeardownError("teardown of the boxes of t incomplete",
                          [inner, ValueError("hook failed")])
    matched, rest = outer.split(OSError)
    assert isinstance(matched, TeardownError) and isinstance(rest, TeardownError)
    assert [type(e) for e in rest.exceptions] == [ValueError]
    assert isinstance(outer, NsboxError)
