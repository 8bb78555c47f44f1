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

