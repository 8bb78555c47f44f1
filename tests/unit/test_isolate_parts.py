"""Parts of whole-test isolation that need no box: messages, test-id hostnames, the test
box's mounts from the worker's mountinfo, crash causes."""
from __future__ import annotations

import os
import re
import socket
import threading

import pytest

from pytest_nsbox.isolate import Outcome, crash_cause, hostname_for, short_size
from pytest_nsbox.isolate.messages import (ItemDone, Ready, Report, RunItem, Start, encode,
                                           recv, report_data, send)
from pytest_nsbox.kernel.mountinfo import parse
from pytest_nsbox.model.spec import BoxSpec
from pytest_nsbox.runtime.forkbox import BIND_RO, BIND_RW, COW, DEV, FRESH, child_mounts
from pytest_nsbox.runtime.protocol import ProtocolError

LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


@pytest.mark.parametrize("nodeid", [
    "t.py::test_x[a b]", "t.py::test_x[x/y]", "t.py::test_x[h:p]", "t.py::test_x[f(x)]",
    "t.py::test_x[1+1]", "t.py::test_x['q']", 't.py::test_x["d"]', "t.py::test_x[é ü]",
    "t.py::test_x[日本]", "t.py::test_x[-]", "t.py::test_x[]", "t.py::" + "y" * 300,
    "t.py::TestC::test_m", "dir/t.py", "::"])
def test_hostnames_are_dns_labels(nodeid: str) -> None:
    """Any test id gives an RFC 1123 label (letters, digits, '-', at most 63, no '-' at
    either end: RFC 1123 section 2.1), as sethostname and resolvers take it."""
    assert LABEL.match(hostname_for(nodeid)), hostname_for(nodeid)


def test_hostnames_are_unique_where_ids_differ_only_in_punctuation() -> None:
    ids = ["t.py::test[a b]", "t.py::test[a/b]", "t.py::test[a:b]", "t.py::test[a-b]"]
    assert len({hostname_for(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("n,text", [(64 << 20, "64M"), (3 << 29, "1.5G"), (512 << 10, "512k"),
                                    (100, "100"), (6 * (1 << 20) + 1, "6.00M")])
def test_short_size(n: int, text: str) -> None:
    assert short_size(n) == text


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_messages_round_trip_with_descriptors() -> None:
    a, b = _pair()
    r, w = os.pipe()
    try:
        msg = RunItem(nodeid="t.py::x", next_nodeid=None, hostname="h", network=True,
                      caps=(0, 1), seccomp=True, no_new_privs=True, privileged=False,
                      env={"A": "1"}, cgroup_fds=2)
        send(a, msg, [r, w])
        got, fds = recv(b)
        assert got == msg and len(fds) == 2
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_a_report_larger_than_a_socket_buffer_arrives_whole() -> None:
    """Stream framing: a report's captured output may be megabytes (seqpacket would refuse
    a message larger than the socket buffer with EMSGSIZE)."""
    a, b = _pair()
    big = {"sections": [["Captured stdout call", "x" * (8 << 20)]], "location": ["f", 1, "d"]}
    sender = threading.Thread(target=send, args=(a, Report(data=big)))
    sender.start()
    got, _ = recv(b)
    sender.join()
    assert isinstance(got, Report) and got.data["sections"][0][1] == "x" * (8 << 20)
    a.close()
    assert recv(b) == (None, [])
    b.close()


@pytest.mark.parametrize("body", [b'{"kind": "nope"}', b'[1]', b'not json',
                                  b'{"kind": "ready"}', b'{"kind": "ready", "collected": "x"}',
                                  b'{"kind": "ready", "collected": 1, "extra": 2}'])
def test_unknown_or_malformed_messages_are_errors(body: bytes) -> None:
    """An unknown kind, missing, unknown or mistyped fields raise ``ProtocolError``, never
    a message dropped (pytest-xdist ``dsession.py``: an unknown event is an error)."""
    a, b = _pair()
    a.sendall(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError):
        recv(b)
    a.close()
    b.close()


def test_wrong_descriptor_count_is_an_error() -> None:
    a, b = _pair()
    with pytest.raises(ProtocolError, match="carries 2 file descriptors, not 0"):
        send(a, Start(args=(), cwd="/", sys_path=()))
    a.sendall(encode(Ready(collected=1)))
    assert recv(b)[0] == Ready(collected=1)
    a.close()
    b.close()


def test_report_data_turns_back_the_tuples_pytest_unpacks() -> None:
    data = {"location": ["t.py", 3, "test_x"], "longrepr": ["t.py", 4, "Skipped: no"],
            "sections": [["Captured stdout call", "hi"]], "user_properties": [["a", 1]]}
    out = report_data(data)
    assert out["location"] == ("t.py", 3, "test_x")
    assert out["longrepr"] == ("t.py", 4, "Skipped: no")
    assert out["sections"] == [("Captured stdout call", "hi")]
    assert out["user_properties"] == [("a", 1)]


WORKER_MOUNTINFO = """\
90 42 0:41 / / rw,relatime - overlay nsbox rw,lowerdir=/a:/b,upperdir=/u,workdir=/w
91 90 0:44 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
92 90 0:45 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
93 92 0:46 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
94 92 0:47 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
95 92 0:39 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
96 90 0:48 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
97 90 254:0 /work/p /work/p ro,relatime - ext4 /dev/vda rw
98 90 254:0 /opt/py /opt/py ro,relatime - ext4 /dev/vda rw
99 90 254:0 /data /data rw,relatime - ext4 /dev/vda rw
100 90 0:50 / /run/nsbox-worker rw - tmpfs nsbox rw
101 97 0:51 / /work/p rw - overlay nsbox rw,lowerdir=/work/p,upperdir=/x,workdir=/y
102 90 0:52 / /run/nsbox-isolate rw - ext4 /dev/vda rw
"""


def test_the_test_box_from_the_workers_mounts() -> None:
    """The root and writable mounts are copy-on-write (an overlay over the worker's: a
    project folder made writable in the worker stays so, its writes the test's own);
    proc, sysfs, devpts, mqueue and /dev/shm are new for the test's namespaces (runc's
    default mounts); read-only binds stay read-only; a user's bind stays a bind; the
    worker's own scratch and channel are not there."""
    mounts = child_mounts(parse(WORKER_MOUNTINFO), skip=("/run/nsbox-worker",
                                                         "/run/nsbox-isolate"),
                          binds=("/data",), is_dir=lambda p: True)
    got = {m.point: m.how for m in mounts}
    assert got == {"/": COW, "/proc": FRESH, "/dev": DEV, "/dev/pts": FRESH,
                   "/dev/shm": FRESH, "/dev/mqueue": FRESH, "/sys": FRESH,
                   "/work/p": COW, "/opt/py": BIND_RO, "/data": BIND_RW}
    order = [m.point for m in mounts]
    assert order[0] == "/" and order.index("/dev") < order.index("/dev/pts")


class _Stats:
    def __init__(self, oom_kills: int, peak: int | None) -> None:
        self.oom_kills = oom_kills
        self.memory_peak = peak


def _outcome(status: int | None, whens: tuple[str, ...], oom: int = 0,
             timed_out: float | None = None, error: str | None = None) -> Outcome:
    out = Outcome("t.py::x")
    out.done = ItemDone(nodeid="t.py::x", status=status, error=error)

    class _R:
        def __init__(self, when: str) -> None:
            self.when = when

    out.reports = [_R(w) for w in whens]  # type: ignore[misc]
    out.stats = _Stats(oom, 64 << 20 if oom else None)
    out.timed_out = timed_out
    return out


def test_crash_causes() -> None:
    spec = BoxSpec.from_kwargs({"memory": "64M"})
    assert crash_cause(_outcome(0, ("setup", "call", "teardown")), spec) is None
    assert crash_cause(_outcome(0, ("setup", "teardown")), spec) is None  # setup failed
    assert crash_cause(_outcome(9, ("setup",), oom=1), spec) == \
        "exceeded memory=64M (peak 64.0 MiB)"
    assert crash_cause(_outcome(11, ("setup",)), spec) == "killed by SIGSEGV"
    assert crash_cause(_outcome(3 << 8, ("setup",)), spec) == \
        "its process exited with status 3 before the test ended"
    assert crash_cause(_outcome(9, ("setup",), timed_out=5), spec) == "timed out after 5 s"
    assert crash_cause(_outcome(None, (), error="no box"), spec) == "no box"


def test_memory_is_named_only_for_what_the_oom_killer_does() -> None:
    """The OOM killer sends SIGKILL (mm/oom_kill.c ``__oom_kill_process``): a test process
    that exited, or died of another signal, after a subprocess was killed for memory is
    named as it ended, with the kills as a note; a box whose PID 1 the killer took is
    named for memory, with what ended it."""
    spec = BoxSpec.from_kwargs({"memory": "64M"})
    note = "the kernel killed 1 process of the test's box for memory, at memory=64M"
    assert crash_cause(_outcome(3 << 8, ("setup",), oom=1), spec) == \
        f"its process exited with status 3 before the test ended ({note})"
    assert crash_cause(_outcome(11, ("setup",), oom=1), spec) == f"killed by SIGSEGV ({note})"
    assert crash_cause(_outcome(9, ("setup",), oom=2), spec) == \
        "exceeded memory=64M (peak 64.0 MiB)"
    ended = "the test's box ended before its test did (its PID 1 was killed by signal 9)"
    assert crash_cause(_outcome(None, ("setup",), oom=1, error=ended), spec) == \
        f"exceeded memory=64M (peak 64.0 MiB): {ended}"
    assert crash_cause(_outcome(None, ("setup",), error=ended), spec) == ended
    assert crash_cause(_outcome(0, ("setup", "call", "teardown"), oom=3), spec) is None
    unlimited = BoxSpec.from_kwargs({})
    assert crash_cause(_outcome(9, ("setup",), oom=1), unlimited) == \
        "killed for memory with no memory limit of its own (peak 64.0 MiB)"


def test_ini_defaults_cover_every_marker_key_but_name() -> None:
    """One ini line per key (``nsbox_<key>``), so a suite can set any of them for every
    test (``nsbox_cap_add = NET_ADMIN``)."""
    from pytest_nsbox.model.spec import KEYS
    from pytest_nsbox.plugin import INI_DEFAULT_KEYS

    assert set(INI_DEFAULT_KEYS) == set(KEYS) - {"name"}


ROOTLESS_WORKER_MOUNTINFO = """\
90 42 0:41 / / rw,relatime - overlay overlay rw,userxattr
92 90 0:45 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
93 92 0:5 /null /dev/null rw,nosuid - devtmpfs udev rw
94 92 0:5 /full /dev/full rw,nosuid - devtmpfs udev rw
95 90 254:0 /etc/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw
"""


def test_devices_and_files_bound_one_by_one() -> None:
    """A rootless worker's /dev holds devices bound one by one (a user namespace may not
    mknod; bubblewrap's ``--dev`` binds them the same way): they come with /dev's
    recursive bind. A file bound on its own stays a bind: overlayfs mounts only on a
    directory."""
    mounts = child_mounts(parse(ROOTLESS_WORKER_MOUNTINFO),
                          is_dir=lambda p: not p.endswith(".conf"))
    assert {m.point: m.how for m in mounts} == {"/": COW, "/dev": DEV,
                                                "/etc/resolv.conf": BIND_RW}
