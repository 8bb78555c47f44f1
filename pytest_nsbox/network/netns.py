"""Network namespaces without leaving the calling thread's: a short-lived thread enters one.

Sockets (netlink ones too) belong to the namespace their creator was in when it made them,
and a thread may ``setns`` its own network namespace without touching the rest of the
process. So every operation on a namespace runs in a fresh thread that ``setns``es into it
first; no Python code ever runs in a fork of the pytest process.

Named namespaces (the private networks' switches) are made by hand like ``ip netns add``
does, minus its ``mount --make-shared /run/netns``: a thread ``unshare``s a new namespace
and bind-mounts ``/proc/thread-self/ns/net`` onto ``/run/netns/<name>``, so ``ip netns``
lists it while it lives and the host's mount table gets back exactly what it had once it is
removed.

Who runs an operation is a ``Runner``, given by the box (``BoxHandle.netns_runner``):
``THREADS`` (the threads above) for an owner that is root; for a rootless owner, which may
neither ``setns`` into its boxes' namespaces nor mount on ``/run/netns``, the agent in the
boxes' user namespace (``runtime/agent.py``), whose switch namespaces are anonymous: held
open by a descriptor (``Fd``), gone with it and with their last user.
"""
from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..kernel import libc
from .errors import NetworkError

if TYPE_CHECKING:
    from .handle import BoxHandle

T = TypeVar("T")

NETNS_DIR = "/run/netns"
#: Longest any one namespace operation (a few netlink requests) may take.
OP_TIMEOUT = 30.0


class Fd(int):
    """A file descriptor that must travel as one: a ``Runner`` that runs an operation in
    another process passes it as SCM_RIGHTS, and the operation gets its own descriptor
    there (an ``Fd`` as well). In this process it is the plain int."""


class Runner(Protocol):
    """Runs network operations in a namespace (see the module docstring).

    ``run_in(ns_fd, fn, what, timeout)``: ``fn()`` inside network namespace ``ns_fd`` (None:
    a new one), its value or exception; ``NetworkError`` naming ``what`` when the namespace
    cannot be entered or ``timeout`` seconds pass. ``fn`` is a module-level function of
    this package (``functools.partial`` of one), its descriptors wrapped in ``Fd``.
    ``named``: switch namespaces are bound at ``/run/netns/<name>`` (else anonymous).
    """

    named: bool

    def run_in(self, ns_fd: int | None, fn: Callable[[], T], what: str,
               timeout: float = OP_TIMEOUT) -> T: ...


def run_in(ns_fd: int | None, fn: Callable[[], T], what: str,
           timeout: float = OP_TIMEOUT) -> T:
    """``fn()`` in a new thread inside the network namespace ``ns_fd`` (None: a new one).

    Its result or exception comes back to the caller; ``what`` names the operation in the
    error if the namespace cannot be entered or the thread does not finish in ``timeout``.
    """
    out: dict[str, object] = {}

    def body() -> None:
        try:
            if ns_fd is None:
                libc.unshare(libc.CLONE_NEWNET)
            else:
                libc.setns(ns_fd, libc.CLONE_NEWNET)
        except OSError as exc:
            out["error"] = NetworkError(f"{what}: cannot enter the network namespace: {exc}")
            return
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed whole to the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=body, name=f"nsbox-netns: {what}"[:60], daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetworkError(f"{what}: did not finish within {timeout:g} s")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")  # type: ignore[return-value]


class Threads:
    """The ``Runner`` of an owner that is root: ``run_in`` in a fresh thread of its own."""

    named = True

    def run_in(self, ns_fd: int | None, fn: Callable[[], T], what: str,
               timeout: float = OP_TIMEOUT) -> T:
        return run_in(ns_fd, fn, what, timeout)


THREADS = Threads()


def current() -> Fd:
    """A descriptor of the calling thread's network namespace (``Runner.run_in(None,
    current, ...)`` makes an anonymous one and returns it)."""
    return Fd(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))


def create_switch(name: str, runner: Runner) -> int:
    """A new switch namespace for ``runner``: named (``create_named``) or anonymous (a
    descriptor, the caller's to close)."""
    if runner.named:
        return create_named(name)
    return int(runner.run_in(None, current, f"creating network namespace {name}"))


def named_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def create_named(name: str) -> int:
    """A new network namespace bound at ``/run/netns/<name>``; returns an fd to it.

    The caller closes the fd and calls ``remove_named``.
    """
    path = named_path(name)
    os.makedirs(NETNS_DIR, 0o755, exist_ok=True)

    def make() -> int:
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
            try:
                libc.mount("/proc/thread-self/ns/net", path, None, libc.MS_BIND)
            except BaseException:
                os.unlink(path)
                raise
        except BaseException:
            os.close(fd)
            raise
        return fd

    try:
        return run_in(None, make, f"creating network namespace {name}")
    except OSError as exc:
        raise NetworkError(f"creating network namespace {name} at {path} failed: {exc}") from None


def remove_named(name: str) -> bool:
    """Unmount and delete ``/run/netns/<name>``; True if there was one. The namespace dies
    with its last user (its interfaces, bridge and veths with it).

    A mount namespace made while the name existed (a zygote's spare box) holds a copy of
    the bind mount; deleting the file detaches such copies too (Linux >= 3.18), so no other
    namespace keeps the switch alive.
    """
    path = named_path(name)
    found = os.path.exists(path)
    if not found:  # an anonymous switch's name (and umount2 needs root before it looks)
        return False
    try:
        libc.umount2(path, libc.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise NetworkError(f"removing network namespace {name}: {exc}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetworkError(f"removing network namespace {name}: cannot delete {path}: "
                           f"{exc.strerror}") from None
    return found


def list_named(prefix: str = "nsbox") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def open_box_netns(box: BoxHandle) -> int:
    """An fd to the box's network namespace, checked to belong to the box (not a reused PID)."""
    from ..errors import BoxClosed

    if not box.alive():
        raise BoxClosed(f"box {box.name!r} is closed")
    try:
        fd = os.open(f"/proc/{box.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BoxClosed(f"box {box.name!r}: its init (pid {box.pid}) is gone: "
                        f"{exc.strerror}") from None
    if not box.alive():  # the PID could have been reused between the check and the open
        os.close(fd)
        raise BoxClosed(f"box {box.name!r}: its init has exited")
    return fd
