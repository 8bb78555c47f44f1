"""``close()`` reports every teardown failure, and still undoes everything else.

Written from CPython's ``contextlib.ExitStack`` (every callback runs, last in first out,
even after one raised) and PEP 654 (one ``ExceptionGroup`` holding every error); the
no-leak checks are the ones ``tests/test_teardown.py`` uses (``leaks.Snapshot``).
"""
from __future__ import annotations

import os

import pytest

from leaks import Snapshot
from test_teardown import _alive
from pytest_nsbox import Box
from pytest_nsbox.errors import TeardownError
from pytest_nsbox.runtime import box as box_mod


def test_close_reports_all_injected_teardown_errors_and_leaks_nothing(monkeypatch, run_dir):
    Box(image="busybox").close()  # the zygote is up before counting
    before = Snapshot.take()
    real_kill = box_mod.Box._kill_init

    def broken_record(self: Box) -> None:
        raise RuntimeError("injected: record")

    def kill_then_fail(self: Box) -> None:
        real_kill(self)
        raise RuntimeError("injected: after the kill")

    def broken_detach(self: Box) -> None:
        raise RuntimeError("injected: detach")

    monkeypatch.setattr(box_mod.Box, "_retire_record", broken_record)
    monkeypatch.setattr(box_mod.Box, "_kill_init", kill_then_fail)
    monkeypatch.setattr(box_mod.Box, "_detach_processes", broken_detach)
    box = Box(image="busybox", memory="64M")
    box.run("sleep 1000 &", check=True)
    pids = box._cgroup.pids()
    cgroup_dirs = list(box._cgroup.paths)
    with pytest.raises(TeardownError) as info:
        box.close()
    group = info.value
    assert isinstance(group, ExceptionGroup)
    # Newest undo first: the record, the kill, the commands.
    assert [str(e) for e in group.exceptions] == [
        "injected: record", "injected: after the kill", "injected: detach"]
    assert f"teardown of box {box.name!r} incomplete" in str(group)
    # The steps after each failure still ran: processes, cgroup, layers are gone.
    assert not any(_alive(pid) for pid in pids)
    assert not any(os.path.exists(d) for d in cgroup_dirs)
    assert not os.path.exists(box.dirs.base)
    assert box.stats().memory_limit == 64 * 1024**2  # final stats were read before the kill
    box.close()  # idempotent: nothing left to undo, nothing raised
    assert Snapshot.take() == before



def _two_box_factory(finished: list[tuple[str, str]]):
    from pytest_nsbox.factory import BoxFactory
    from pytest_nsbox.model.spec import BoxSpec
    from pytest_nsbox.runtime.engine import default_engine

    return BoxFactory(group="test_teardown_errors::two", label="two",
                      base_spec=lambda: BoxSpec.from_kwargs({"image": "busybox"}),
                      engine=default_engine,
                      finished=lambda box, outcome: finished.append((box.name, outcome)))


def test_the_factory_reports_every_box_whose_teardown_failed(monkeypatch):
    """Closing a test's boxes closes each one and collects every box's errors (today's
    ``close_all`` kept only the first), as ExitStack runs every callback."""
    def broken_record(self: Box) -> None:
        raise RuntimeError(f"injected: {self.name}")

    monkeypatch.setattr(box_mod.Box, "_retire_record", broken_record)
    finished: list[tuple[str, str]] = []
    factory = _two_box_factory(finished)
    first, second = factory(name="first"), factory(name="second")
    with pytest.raises(TeardownError) as info:
        factory.close_all("failed")
    group = info.value
    assert all(isinstance(e, TeardownError) for e in group.exceptions)
    assert [[str(x) for x in e.exceptions] for e in group.exceptions] == [  # newest first
        ["injected: second"], ["injected: first"]]
    assert finished == [("second", "failed"), ("first", "failed")]
    assert first.closed and second.closed
    assert not os.path.exists(first.dirs.base) and not os.path.exists(second.dirs.base)
    factory.close_all("failed")  # idempotent


def test_a_failing_finished_hook_does_not_stop_the_boxes_closing():
    """The hook and the close are two undo steps: both run, the hook's error is reported."""
    finished: list[tuple[str, str]] = []
    factory = _two_box_factory(finished)
    box = factory()

    def fail(_box: Box, _outcome: str) -> None:
        raise ValueError("hook failed")

    factory._finished = fail
    with pytest.raises(TeardownError) as info:
        factory.close_all()
    assert [str(e) for e in info.value.exceptions] == ["hook failed"]
    assert box.closed and not os.path.exists(box.dirs.base)


def test_the_plugin_reports_both_boxes_teardown_errors(pytester, monkeypatch):
    """Seen as a user sees it (pytester, pytest-dev's own way to test plugins): the
    test errors at teardown and the report names both boxes' failures."""
    pytester.makeconftest("""
        from pytest_nsbox.runtime import box as box_mod

        def broken_record(self):
            raise RuntimeError(f"injected: {self.name}")

        box_mod.Box._retire_record = broken_record
    """)
    pytester.makepyfile("""
        def test_two(nsbox_factory):
            nsbox_factory(name="first")
            nsbox_factory(name="second")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*TeardownError*injected: second*injected: first*"])
