"""runtime.protocol: every message and the plan round-trip; what is not a message is an error.

Written from pytest-xdist's ``DSession`` (src/xdist/dsession.py, ``worker_*`` dispatch:
an event with no handler is an error, never dropped) for the message dispatch, and from
bubblewrap's ``SetupOp`` list (bubblewrap.c, ``setup_newroot``: one op type, a switch that
dies on an unknown op) for the mount ops.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Any

import pytest

from pytest_nsbox.errors import BoxError
from pytest_nsbox.kernel import libc
from pytest_nsbox.model.image import Image
from pytest_nsbox.runtime import init, protocol
from pytest_nsbox.runtime.plan import BoxDirs, build_plan
from pytest_nsbox.runtime.protocol import (
    MESSAGES,
    BoxCreated,
    BoxReady,
    CreateBox,
    CreateFailed,
    Exec,
    ExecFailed,
    Exited,
    Kill,
    MountOp,
    ProtocolError,
    SetupFailed,
    Started,
)


def a_plan() -> protocol.BoxPlan:
    image = Image(ref="t", id="0" * 64, layers=("l1",), layer_dirs=("/s/l1",))
    return build_plan(box_id="b1", hostname="h", image=image, dirs=BoxDirs("/run/b1"),
                      binds=[], cgroup_procs=["/sys/fs/cgroup/x/cgroup.procs"],
                      network="none", caps=[0, 1, 5])


EXAMPLES: list[protocol.Message] = [
    CreateBox(plan=a_plan()),
    BoxCreated(pid=4242),
    CreateFailed(error="cannot start box: [Errno 11] EAGAIN"),
    BoxReady(marks=(("plan received", 1.5), ("overlay", 2.0))),
    SetupFailed(error="No such file or directory: /bin"),
    Exec(argv=("sh", "-c", "echo hi"), env={"PATH": "/bin", "A": "é"}, cwd="/", user=None),
    Exec(argv=("id",), env={}, cwd="/tmp", user="nobody:nogroup"),
    Kill(pid=7, signal=9),
    Started(pid=7),
    ExecFailed(error="No such file or directory: nope", errno=2),
    Exited(status=256, ended=12345.25),
]


def test_every_message_kind_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGES.values())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.kind)
def test_every_message_round_trips(msg: protocol.Message) -> None:
    data = protocol.encode(msg)
    assert json.loads(data)["kind"] == msg.kind
    assert protocol.decode(data, msg.fds) == msg


def test_the_plan_round_trips_with_its_ops_typed() -> None:
    plan = a_plan()
    back = protocol.decode(protocol.encode(CreateBox(plan=plan)), 1)
    assert isinstance(back, CreateBox)
    assert back.plan == plan
    assert all(isinstance(op, MountOp) for op in back.plan.ops)
    assert back.plan.confine.caps == (0, 1, 5)


@pytest.mark.parametrize("kind", ["", "exec2", "ready", None, 3])
def test_an_unknown_kind_raises(kind: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown message kind"):
        protocol.decode(json.dumps({"kind": kind, "pid": 1}).encode())


def test_a_message_without_kind_raises() -> None:
    # The old shape, told apart by which key is present, is no message any more.
    with pytest.raises(ProtocolError, match="unknown message kind None"):
        protocol.decode(b'{"pid": 1}')


@pytest.mark.parametrize(("data", "match"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"kind": "started"}', "missing field 'pid'"),
    (b'{"kind": "started", "pid": 1, "extra": 2}', "unknown field 'extra'"),
    (b'{"kind": "started", "pid": "1"}', "pid: expected int, got '1'"),
    (b'{"kind": "started", "pid": true}', "pid: expected int, got True"),
    (b'{"kind": "exec", "argv": "sh", "env": {}, "cwd": "/", "user": null}',
     "argv: expected a list"),
    (b'{"kind": "exec", "argv": ["sh"], "env": {"A": 1}, "cwd": "/", "user": null}',
     r"env\['A'\]: expected str"),
    (b'{"kind": "box-ready", "marks": [["x", 1.0, 2]]}', r"marks\[0\]: expected a list of 2 items"),
])
def test_a_malformed_message_raises_naming_what_is_wrong(data: bytes, match: str) -> None:
    nfds = 4 if b'"exec"' in data else 0
    with pytest.raises(ProtocolError, match=match):
        protocol.decode(data, nfds)


def test_a_protocol_error_is_a_box_error() -> None:
    assert issubclass(ProtocolError, BoxError)


def test_a_message_with_the_wrong_fd_count_raises() -> None:
    with pytest.raises(ProtocolError, match="came with 0 file descriptors, not 4"):
        protocol.decode(protocol.encode(Exec(argv=("true",), env={}, cwd="/", user=None)), 0)
    with pytest.raises(ProtocolError, match="carries 0 file descriptors, not 1"):
        a, b = protocol.socketpair()
        with a, b:
            protocol.send(a, Kill(pid=1, signal=9), [a.fileno()])


def test_send_and_recv_carry_message_and_fds() -> None:
    a, b = protocol.socketpair()
    r, w = os.pipe()
    try:
        protocol.send(a, BoxCreated(pid=99), [w])
        msg, fds = protocol.recv(b)
        assert msg == BoxCreated(pid=99) and len(fds) == 1
        os.write(fds[0], b"x")
        os.close(fds[0])
        assert os.read(r, 1) == b"x"
        a.close()
        assert protocol.recv(b) == (None, [])
    finally:
        b.close()
        os.close(r)
        os.close(w)


def test_a_frame_is_forwarded_unchanged_and_decodes_on_the_far_side() -> None:
    """The zygote peeks at a ``CreateBox`` (kind and fd count, as xdist's dispatch checks
    an event's name first) and passes its bytes on; the spare decodes the plan once."""
    owner, zygote_end = protocol.socketpair()
    zygote_out, spare = protocol.socketpair()
    r, w = os.pipe()
    try:
        msg = CreateBox(plan=a_plan())
        protocol.send(owner, msg, [w])
        frame, fds = protocol.recv_frame(zygote_end)
        assert frame is not None and frame.kind == CreateBox.kind and len(fds) == 1
        assert frame.data == protocol.encode(msg)
        protocol.send_frame(zygote_out, frame, fds)
        os.close(fds[0])
        got, got_fds = protocol.recv(spare)
        assert got == msg and len(got_fds) == 1
        os.close(got_fds[0])
        owner.close()
        assert protocol.recv_frame(zygote_end) == (None, [])
    finally:
        for s in (zygote_end, zygote_out, spare):
            s.close()
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("data, nfds, match", [
    (b'{"kind": "bogus"}', 0, "unknown message kind 'bogus'"),
    (b'[1]', 0, "not an object"),
    (b'nope', 0, "not JSON"),
    (b'{"kind": "create-box", "plan": {}}', 0, "came with 0 file descriptors, not 1"),
])
def test_a_frame_is_checked_for_kind_and_fds(data: bytes, nfds: int, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        protocol.peek(data, nfds)


def test_send_frame_checks_the_fd_count() -> None:
    a, b = protocol.socketpair()
    try:
        frame = protocol.peek(protocol.encode(Kill(pid=1, signal=9)), 0)
        with pytest.raises(ProtocolError, match="carries 0 file descriptors, not 1"):
            protocol.send_frame(a, frame, [0])
    finally:
        a.close()
        b.close()


def test_recv_closes_the_fds_of_a_bad_message() -> None:
    a, b = protocol.socketpair()
    r, w = os.pipe()
    try:
        a.sendmsg([b'{"kind": "bogus"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           w.to_bytes(4, "little"))])
        os.close(w)
        with pytest.raises(ProtocolError):
            protocol.recv(b)
        # The received copy of the write end was closed: the pipe's reader sees EOF.
        assert os.read(r, 1) == b""
    finally:
        a.close()
        b.close()
        os.close(r)


# -- mount ops --------------------------------------------------------------------------

def test_an_unknown_mount_op_kind_is_refused_when_made() -> None:
    with pytest.raises(ValueError, match="unknown mount op kind 'pivot'"):
        MountOp("pivot", "/x")


def test_an_unknown_mount_op_kind_is_refused_when_decoded() -> None:
    data = json.loads(protocol.encode(CreateBox(plan=a_plan())))
    data["plan"]["ops"][0]["kind"] = "overmount"
    with pytest.raises(ProtocolError, match=r"plan.ops\[0\]: unknown mount op kind 'overmount'"):
        protocol.decode(json.dumps(data).encode(), 1)


def test_the_init_raises_on_a_mount_op_kind_it_has_no_handler_for() -> None:
    op = MountOp(protocol.MKDIR, "/x")
    object.__setattr__(op, "kind", "overmount")  # past __post_init__: the init's own check
    with pytest.raises(ValueError, match="unknown mount op kind 'overmount'"):
        init.run_op(-1, op)


def test_the_init_has_a_handler_for_every_mount_op_kind() -> None:
    assert set(init._OPS) == set(protocol.MOUNT_KINDS)


def test_mount_op_names_are_uniform() -> None:
    """``dest`` is where every op acts; a symlink's content is its ``source``."""
    ops = a_plan().ops
    link = next(op for op in ops if op.kind == protocol.SYMLINK and op.dest == "/dev/fd")
    assert link.source == "/proc/self/fd"
    node = next(op for op in ops if op.kind == protocol.MKNOD and op.dest == "/dev/null")
    assert (node.major, node.minor) == (1, 3)
    assert {f.name for f in dataclasses.fields(MountOp)} >= {
        "kind", "source", "dest", "flags", "allow_missing"}


def test_only_the_masked_and_read_only_paths_may_be_missing() -> None:
    missing_ok = {op.kind for op in a_plan().ops if op.allow_missing}
    assert missing_ok == {protocol.MASK, protocol.READONLY}


@pytest.mark.parametrize("kind", [protocol.MASK, protocol.READONLY, protocol.REMOUNT,
                                  protocol.BIND])
def test_a_missing_dest_skips_only_an_allow_missing_op(tmp_path: Any, kind: str) -> None:
    rootfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        init.run_op(rootfd, MountOp(kind, "/proc/nope", source="/", allow_missing=True,
                                    flags=libc.MS_RDONLY))
        with pytest.raises(FileNotFoundError):
            init.run_op(rootfd, MountOp(kind, "/proc/nope", source="/", flags=libc.MS_RDONLY))
    finally:
        os.close(rootfd)
    assert os.listdir(tmp_path) == []
