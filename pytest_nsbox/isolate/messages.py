"""Messages between a pytest process and its isolation worker, and their framing.

One stream socket (AF_UNIX) per worker. Each message is a 4-byte big-endian length and a
JSON object with a ``kind``; file descriptors ride along as SCM_RIGHTS on the frame's first
byte. A stream, not seqpacket, because a report's captured output can be larger than a
socket buffer. Every message is a frozen dataclass below; an unknown kind, unknown or
missing fields, or the wrong number of descriptors is a ``ProtocolError`` (as pytest-xdist's
``DSession`` treats an unknown worker event: an error, never dropped).

=================  ==============  ==============================================
pytest -> worker   ``Start`` + 2   the worker's arguments; the terminal's stdout
                                   and stderr, for its uncaptured output
                   ``RunItem`` + n run one test in a box of its own; n: the test
                                   cgroup's ``cgroup.procs`` files, opened
                   ``Finish``      tear down what is set up, end the session
worker -> pytest   ``Ready``       collected (how many items)
                   ``Report``      one phase's report of the test (from its box)
                   ``WarningRecorded`` a warning the test raised (from its box)
                   ``ItemDone``    the test's box is gone: its wait status, what the
                                   worker's own setup/teardown of wider scopes said
                   ``Finished``    the session is over (teardown errors, if any)
=================  ==============  ==============================================

Reports are what ``pytest_report_to_serializable`` makes of a ``TestReport`` (the way
pytest-xdist ships them); the JSON round trip turns tuples into lists, and ``report_data``
turns back the ones pytest's readers unpack.
"""
from __future__ import annotations

import array
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from ..model.jsondata import DataError, from_json, to_json
from ..runtime.protocol import ProtocolError

MAX_FDS = 16
_HEADER = struct.Struct(">I")
#: A frame larger than this is a broken stream, not a report.
MAX_FRAME = 1 << 30


@dataclass(frozen=True)
class Start:
    """What the worker runs: pytest's ``args`` from ``cwd`` with ``sys_path``; ``workerinput``
    is pytest-xdist's for this process (None outside xdist); ``cow``: read-only folders of
    the worker's box it puts a writable layer over (the project folder); ``binds``: the
    folders bound into the worker's box for its tests (``binds=``), which each test's box
    binds as they are; ``env``: the pytest process's environment. Carries stdout and
    stderr."""

    kind: ClassVar[str] = "start"
    args: tuple[str, ...]
    cwd: str
    sys_path: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workerinput: dict[str, Any] | None = None
    cow: tuple[str, ...] = ()
    binds: tuple[str, ...] = ()

    def fds(self) -> int:
        return 2


@dataclass(frozen=True)
class RunItem:
    """Run test ``nodeid`` (``next_nodeid``: the test after it, whose wider-scoped fixtures
    are kept) in a box: its ``hostname``; its own network namespace unless ``network`` is
    False; ``caps`` the capability numbers it keeps (None: all), ``seccomp``,
    ``no_new_privs``, ``privileged``; ``env`` set over the worker's; ``user`` the test runs
    as (None: root); ``timeout``: seconds after which the worker kills the box (None: no
    bound). Carries ``cgroup_fds`` descriptors."""

    kind: ClassVar[str] = "run-item"
    nodeid: str
    next_nodeid: str | None
    hostname: str
    network: bool
    caps: tuple[int, ...] | None
    seccomp: bool
    no_new_privs: bool
    privileged: bool
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    timeout: float | None = None
    cgroup_fds: int = 0

    def fds(self) -> int:
        return self.cgroup_fds


@dataclass(frozen=True)
class Finish:
    kind: ClassVar[str] = "finish"

    def fds(self) -> int:
        return 0


@dataclass(frozen=True)
class Ready:
    """Collection is over: ``collected`` items, ``errors`` the collection errors' text."""

    kind: ClassVar[str] = "ready"
    collected: int
    errors: tuple[str, ...] = ()

    def fds(self) -> int:
        return 0


@dataclass(frozen=True)
class Report:
    """One ``TestReport``, serialized (``pytest_report_to_serializable``); ``logged``: a
    report a plugin logged itself during the test (a subtest's), not a phase's."""

    kind: ClassVar[str] = "report"
    data: dict[str, Any]
    logged: bool = False

    def fds(self) -> int:
        return 0


@dataclass(frozen=True)
class WarningRecorded:
    """A warning the test raised (``pytest_warning_recorded``'s arguments; the warning's
    category by module and name, as pytest-xdist's ``serialize_warning_message``)."""

    kind: ClassVar[str] = "warning"
    message: str
    category_module: str
    category_name: str
    filename: str
    lineno: int
    when: str
    nodeid: str
    location: tuple[str, int, str] | None = None

    def fds(self) -> int:
        return 0


@dataclass(frozen=True)
class ItemDone:
    """The test's box ended. ``status``: the test process's wait status (None: it never
    ran, ``error`` says why); ``timed_out``: the worker killed it at the ``timeout``;
    ``sections``: captured output of the worker's setup and
    teardown of wider scopes, ``(title, text)``; ``teardown``: a serialized teardown report
    when tearing those down failed."""

    kind: ClassVar[str] = "item-done"
    nodeid: str
    status: int | None
    error: str | None = None
    timed_out: bool = False
    sections: tuple[tuple[str, str], ...] = ()
    teardown: dict[str, Any] | None = None

    def fds(self) -> int:
        return 0


@dataclass(frozen=True)
class Finished:
    """The worker's session is over; ``errors``: what tearing down its fixtures raised."""

    kind: ClassVar[str] = "finished"
    errors: tuple[str, ...] = ()

    def fds(self) -> int:
        return 0


Message = Union[Start, RunItem, Finish, Ready, Report, WarningRecorded, ItemDone, Finished]
MESSAGES: dict[str, type[Message]] = {cls.kind: cls for cls in (
    Start, RunItem, Finish, Ready, Report, WarningRecorded, ItemDone, Finished)}


def encode(msg: Message) -> bytes:
    data = to_json(msg)
    data["kind"] = msg.kind
    body = json.dumps(data, separators=(",", ":"), default=repr).encode()
    return _HEADER.pack(len(body)) + body


def decode(body: bytes, nfds: int) -> Message:
    """The message in ``body`` (which came with ``nfds`` descriptors); ``ProtocolError``
    for anything that is not one of ours, exactly."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"nsbox isolation: a message that is not JSON ({exc})") from None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"nsbox isolation: unknown message kind {kind!r} "
                            f"(known: {', '.join(MESSAGES)})")
    del obj["kind"]
    try:
        msg = from_json(cls, obj, f"nsbox isolation: message {kind!r}")
    except DataError as exc:
        raise ProtocolError(str(exc)) from None
    if msg.fds() != nfds:
        raise ProtocolError(f"nsbox isolation: message {kind!r} came with {nfds} file "
                            f"descriptors, not {msg.fds()}")
    return msg


def send(sock: socket.socket, msg: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send ``msg`` with ``fds`` (as many as it says it carries)."""
    if len(fds) != msg.fds():
        raise ProtocolError(f"nsbox isolation: message {msg.kind!r} carries {msg.fds()} "
                            f"file descriptors, not {len(fds)}")
    data = encode(msg)
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", fds))])
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, fds: list[int]) -> bytes | None:
    """``n`` bytes (None at EOF before the first); descriptors that arrive go to ``fds``."""
    chunks: list[bytes] = []
    got = 0
    while got < n:
        cmsg_space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        data, ancdata, _flags, _addr = sock.recvmsg(n - got, cmsg_space, socket.MSG_CMSG_CLOEXEC)
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(cdata[:len(cdata) - len(cdata) % received.itemsize])
                fds.extend(received)
        if not data:
            if got == 0:
                return None
            raise ProtocolError(f"nsbox isolation: the stream ended inside a message "
                                f"({got} of {n} bytes)")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """The next message and its descriptors; ``(None, [])`` at the end of the stream."""
    fds: list[int] = []
    try:
        header = _recv_exact(sock, _HEADER.size, fds)
        if header is None:
            return None, []
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ProtocolError(f"nsbox isolation: a message of {size} bytes")
        body = _recv_exact(sock, size, fds) if size else b""
        if body is None:
            raise ProtocolError("nsbox isolation: the stream ended after a message header")
        return decode(body, len(fds)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def report_data(data: dict[str, Any]) -> dict[str, Any]:
    """A serialized report after the JSON round trip, with its tuples back: those pytest's
    readers unpack or check (``fspath, lineno, domain = report.location``; a skip's
    ``longrepr`` is a ``(path, lineno, reason)`` tuple; ``for title, text in
    report.sections``)."""
    out = dict(data)
    if isinstance(out.get("location"), list):
        out["location"] = tuple(out["location"])
    if isinstance(out.get("longrepr"), list):  # a skip's (path, lineno, reason)
        out["longrepr"] = tuple(out["longrepr"])
    for name in ("sections", "user_properties"):
        if isinstance(out.get(name), list):
            out[name] = [tuple(x) if isinstance(x, list) else x for x in out[name]]
    return out
