"""Messages between the pytest process, the zygote and a box's init, and the plan they carry.

One JSON object per SOCK_SEQPACKET message, file descriptors riding along as SCM_RIGHTS.
Seqpacket keeps message boundaries, so concurrent senders never interleave. Every message is
a frozen dataclass below with a ``kind``; ``send`` encodes and ``recv`` decodes in this one
place, and a message of an unknown kind, with unknown or missing fields, or with the wrong
number of file descriptors is a ``ProtocolError`` (as pytest-xdist's ``DSession`` treats an
unknown worker event: an error, never dropped). Who sends what:

======================  ==================  ==========================================
owner -> zygote         ``CreateBox`` + 1   the plan and the box's end of its control
                                            socket
zygote -> owner         ``BoxCreated`` + 1  the box's host PID and a pidfd for it
                        ``CreateFailed``    why no box was forked
zygote -> spare         ``CreateBox`` + 1   passed on, with the control socket
box init -> owner       ``BoxReady``        the root is built; setup time marks
                        ``SetupFailed``     why the root could not be built
owner -> box init       ``Exec`` + 4        argv, env, cwd, user; stdin, stdout, stderr
                                            and the command's status socket
                        ``Kill``            signal a command's process group
box init -> status      ``Started``         the command's PID in the box
                        ``ExecFailed``      it could not be started (errno)
                        ``Exited``          its wait status
======================  ==================  ==========================================

Imported by the box's init before pivot_root: stdlib and ``model.jsondata`` only.
"""
from __future__ import annotations

import array
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar, Union

from ..errors import BoxError
from ..model.jsondata import DataError, from_json, to_json

MAX_MESSAGE = 1 << 20
MAX_FDS = 8


class ProtocolError(BoxError):
    """A message that is not one of this module's, or not as its kind says."""


# -- the plan ---------------------------------------------------------------------------

#: Mount op kinds, run by ``init.run_op``. ``dest`` is always the path in the box the op
#: makes or changes; ``source`` is what goes there (a filesystem's source name, a host path
#: to bind, a symlink's content).
MOUNT, BIND, REMOUNT, MKNOD, DEVICE, SYMLINK, MKDIR, MASK, READONLY = (
    "mount", "bind", "remount", "mknod", "device", "symlink", "mkdir", "mask", "readonly")
MOUNT_KINDS = (MOUNT, BIND, REMOUNT, MKNOD, DEVICE, SYMLINK, MKDIR, MASK, READONLY)


@dataclass(frozen=True)
class MountOp:
    """One step of building a box's root, as bubblewrap's ``SetupOp``.

    - ``mount``: a ``fstype`` filesystem named ``source`` on ``dest``, with ``flags``
      (``MS_*``) and ``data`` (the option string).
    - ``bind``: host path ``source`` on ``dest``, recursively; ``flags`` ``MS_RDONLY``
      makes it read-only.
    - ``remount``: ``dest``'s mount again with ``flags`` (bind remount).
    - ``mknod``: a device node at ``dest`` with ``mode`` (type and permissions), ``major``,
      ``minor``.
    - ``device``: the host's device node ``source`` bound onto a new empty file at
      ``dest`` (rootless boxes, which may not ``mknod``; bubblewrap ``SETUP_MOUNT_DEV``).
    - ``symlink``: a link at ``dest`` whose content is ``source``.
    - ``mkdir``: a directory at ``dest`` with ``mode``; one already there is kept.
    - ``mask``: hide ``dest`` (an empty read-only tmpfs, or /dev/null over a file).
    - ``readonly``: bind ``dest`` on itself, read-only.

    ``allow_missing``: a ``dest`` that does not exist skips the op instead of failing it
    (Docker's masked and read-only paths are skipped where the kernel has none).
    Raises ``ValueError`` for a kind not in ``MOUNT_KINDS``.
    """

    kind: str
    dest: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0
    major: int = 0
    minor: int = 0
    allow_missing: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MOUNT_KINDS:
            raise ValueError(f"unknown mount op kind {self.kind!r} "
                             f"(known: {', '.join(MOUNT_KINDS)})")


@dataclass(frozen=True)
class Confinement:
    """What the box's commands are held to: ``caps`` the capability numbers they keep
    (None: all), the default ``seccomp`` filter, ``no_new_privs``."""

    caps: tuple[int, ...] | None
    seccomp: bool
    no_new_privs: bool


@dataclass(frozen=True)
class BoxPlan:
    """Everything a box's init needs to build its root and serve commands.

    ``namespaces``: the ones made for it, of ``mnt uts ipc net cgroup`` (no ``net``:
    ``network="host"``); ``cgroup_procs``: ``cgroup.procs`` files it joins; ``root``: the
    overlay's mount point, ``overlay`` its option string and ``overlay_flags`` its
    ``MS_*`` flags; ``overlay_helper``: a program that mounts it instead of the kernel
    (``fuse-overlayfs``, a rootless fallback); ``ops``: run in order; ``trace_ops``: one
    setup mark per op.
    """

    box_id: str
    hostname: str
    namespaces: tuple[str, ...]
    cgroup_procs: tuple[str, ...]
    root: str
    overlay: str
    overlay_flags: int
    ops: tuple[MountOp, ...]
    trace_ops: bool
    confine: Confinement
    overlay_helper: str | None = None


# -- the messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class CreateBox:
    """owner -> zygote, and zygote -> spare; one fd: the box's end of its control socket."""

    kind: ClassVar[str] = "create-box"
    fds: ClassVar[int] = 1
    plan: BoxPlan


@dataclass(frozen=True)
class BoxCreated:
    """zygote -> owner; one fd: a pidfd for the box's init. ``pid`` as the owner sees it."""

    kind: ClassVar[str] = "box-created"
    fds: ClassVar[int] = 1
    pid: int


@dataclass(frozen=True)
class CreateFailed:
    """zygote -> owner: no box was forked, and why."""

    kind: ClassVar[str] = "create-failed"
    fds: ClassVar[int] = 0
    error: str


@dataclass(frozen=True)
class BoxReady:
    """box init -> owner: the root is built. ``marks``: (step, ``time.monotonic()``
    seconds) for ci/bench's setup profile."""

    kind: ClassVar[str] = "box-ready"
    fds: ClassVar[int] = 0
    marks: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class SetupFailed:
    """box init -> owner: the root could not be built; the init exits."""

    kind: ClassVar[str] = "setup-failed"
    fds: ClassVar[int] = 0
    error: str


@dataclass(frozen=True)
class Exec:
    """owner -> box init; four fds: stdin, stdout, stderr, the command's status socket.
    ``user`` None is root (the init resolves names in the box's passwd and group)."""

    kind: ClassVar[str] = "exec"
    fds: ClassVar[int] = 4
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    user: str | None


@dataclass(frozen=True)
class Kill:
    """owner -> box init: ``signal`` to command ``pid``'s process group and to it."""

    kind: ClassVar[str] = "kill"
    fds: ClassVar[int] = 0
    pid: int
    signal: int


@dataclass(frozen=True)
class Started:
    """box init -> status socket: the command runs as ``pid`` (in the box)."""

    kind: ClassVar[str] = "started"
    fds: ClassVar[int] = 0
    pid: int


@dataclass(frozen=True)
class ExecFailed:
    """box init -> status socket: the command could not start; ``errno`` says why (126 or
    127 for the caller, as a shell)."""

    kind: ClassVar[str] = "exec-failed"
    fds: ClassVar[int] = 0
    error: str
    errno: int


@dataclass(frozen=True)
class Exited:
    """box init -> status socket: the command's wait status (``os.waitpid``) and when the
    init reaped it (``ended``: ``time.monotonic()`` seconds; CLOCK_MONOTONIC is the host's
    in every box, nsbox makes no time namespace), so a command waited for late still has
    its own duration."""

    kind: ClassVar[str] = "exited"
    fds: ClassVar[int] = 0
    status: int
    ended: float


Message = Union[CreateBox, BoxCreated, CreateFailed, BoxReady, SetupFailed, Exec, Kill,
                Started, ExecFailed, Exited]
MESSAGES: dict[str, type[Message]] = {cls.kind: cls for cls in (
    CreateBox, BoxCreated, CreateFailed, BoxReady, SetupFailed, Exec, Kill, Started,
    ExecFailed, Exited)}


def encode(msg: Message) -> bytes:
    """``msg`` as the bytes of one message: ``{"kind": ..., <fields>}``."""
    data = to_json(msg)
    data["kind"] = msg.kind
    return json.dumps(data, separators=(",", ":")).encode()


def _kind_of(data: bytes, nfds: int) -> tuple[dict[str, Any], type[Message]]:
    """The JSON object in ``data`` and its message class, checked against ``nfds``."""
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"nsbox protocol: a message that is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"nsbox protocol: a message that is not an object: {obj!r:.80}")
    kind = obj.get("kind")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"nsbox protocol: unknown message kind {kind!r} "
                            f"(known: {', '.join(MESSAGES)})")
    if nfds != cls.fds:
        raise ProtocolError(f"nsbox protocol: message {kind!r} came with {nfds} file "
                            f"descriptors, not {cls.fds}")
    return obj, cls


def decode(data: bytes, nfds: int = 0) -> Message:
    """The message in ``data``, which arrived with ``nfds`` descriptors. Raises
    ``ProtocolError`` for bytes that are not a JSON object, an unknown kind, unknown or
    missing fields, a value of the wrong type, or a descriptor count not the kind's."""
    obj, cls = _kind_of(data, nfds)
    del obj["kind"]
    try:
        return from_json(cls, obj, f"nsbox protocol: message {cls.kind!r}")
    except DataError as exc:
        raise ProtocolError(str(exc)) from None


def unexpected(msg: Message | Frame, where: str) -> ProtocolError:
    """The error for a message of a kind ``where`` has no handler for."""
    return ProtocolError(f"nsbox protocol: {where} got an unexpected {msg.kind!r} message")


def socketpair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, msg: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send ``msg`` with ``fds`` (exactly as many as its kind carries)."""
    if len(fds) != msg.fds:
        raise ProtocolError(f"nsbox protocol: message {msg.kind!r} carries {msg.fds} file "
                            f"descriptors, not {len(fds)}")
    data = encode(msg)
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def _recvmsg(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    # CLOEXEC on arrival: a received fd must never leak into a command the box execs.
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(MAX_FDS * fds.itemsize),
                                                socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(cdata) - (len(cdata) % fds.itemsize)
            fds.frombytes(cdata[:usable])
    if not data:
        _close(fds)
        return b"", []
    return data, list(fds)


T = TypeVar("T")


def _received(sock: socket.socket, read: Callable[[bytes, int], T]) -> tuple[T | None, list[int]]:
    """One message ``read`` from ``sock`` with its fds; ``(None, [])`` at EOF. The fds of
    a message ``read`` refuses are closed."""
    data, fds = _recvmsg(sock)
    if not data:
        return None, []
    try:
        return read(data, len(fds)), fds
    except ProtocolError:
        _close(fds)
        raise


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """One message and its fds; ``(None, [])`` at EOF (the peer is gone). Raises
    ``ProtocolError`` (see ``decode``); the fds that came with a bad message are closed."""
    return _received(sock, decode)


@dataclass(frozen=True)
class Frame:
    """A message whose kind and descriptor count are checked but whose fields are not
    decoded: the zygote passes a ``CreateBox`` on to the spare as it came, so the plan is
    decoded once, in the box (decoding a plan costs about 0.8 ms)."""

    kind: str
    data: bytes


def peek(data: bytes, nfds: int) -> Frame:
    """``data`` as a ``Frame``. Raises ``ProtocolError`` for bytes that are not a JSON
    object, an unknown kind, or a descriptor count not the kind's."""
    _obj, cls = _kind_of(data, nfds)
    return Frame(cls.kind, bytes(data))


def recv_frame(sock: socket.socket) -> tuple[Frame | None, list[int]]:
    """Like ``recv``, but the message is only ``peek``ed."""
    return _received(sock, peek)


def send_frame(sock: socket.socket, frame: Frame, fds: list[int] | tuple[int, ...]) -> None:
    """Send a received ``frame`` on unchanged, with ``fds``."""
    if len(fds) != MESSAGES[frame.kind].fds:
        raise ProtocolError(f"nsbox protocol: message {frame.kind!r} carries "
                            f"{MESSAGES[frame.kind].fds} file descriptors, not {len(fds)}")
    if fds:
        sock.sendmsg([frame.data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(frame.data)


def _close(fds: Any) -> None:
    for fd in fds:
        os.close(fd)
