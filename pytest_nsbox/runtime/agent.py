"""The agent: what a rootless owner cannot do itself, done in its boxes' user namespace.

A process that is not root cannot enter its boxes' network namespaces: ``setns(2)`` into a
network namespace needs ``CAP_SYS_ADMIN`` both in the user namespace that owns it and in
the caller's own (kernel ``netns_install``), and a multithreaded process such as pytest
cannot join a user namespace at all (``setns(2)``: EINVAL). Nor may it delete what a box
user other than root wrote into a read-write layer, owned by a subordinate ID. So the first
process of the boxes' user namespace (``rootless.py``, started by ``client``) serves such
calls for its owner, which is that namespace's owner and so may hand it the namespaces'
file descriptors:

- the owner sends ``(what, netns, fn)``: a callable of this package (a module-level
  function, usually through ``functools.partial``), the network namespace to run it in
  (``"keep"``, ``"new"``: a fresh one, or a descriptor) and ``what`` names it in errors;
  with it, a fresh socket for the answer;
- the agent runs ``fn()`` in a thread of its own that entered that namespace, as
  ``network.netns.run_in`` does in a root owner, and answers ``(True, value)`` or
  ``(False, exception)``.

One ``SOCK_SEQPACKET`` message each way, pickled (protocol 5), as ``multiprocessing``'s
connections carry calls between processes of one program: both ends are processes of the
same user running this same code. File descriptors travel beside it as SCM_RIGHTS: a
``socket.socket`` or a ``network.netns.Fd`` anywhere in a call or a result is sent as a
descriptor (the sender closes its copy of a result's) and arrives as the same kind of
object. The agent unpickles nothing but this package's objects and ``functools.partial``
(``_Unpickler``), so a call can only run code of ours.
"""
from __future__ import annotations

import array
import io
import os
import pickle
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import BoxError
from ..kernel.io import readable
from ..network.netns import Fd

T = TypeVar("T")

#: ``netns`` of a call: run it in the agent's own network namespace, or in a new one.
KEEP = "keep"
NEW = "new"
MAX_MESSAGE = 4 << 20
MAX_FDS = 16
#: Classes outside this package a call may name when the agent unpickles it: the call
#: itself, and the value types the package's plans hold (a shaping plan's exact
#: ``Fraction``s, ``units``' ``Decimal``s); each only rebuilds a value.
_ALLOWED = frozenset({("functools", "partial"), ("builtins", "frozenset"),
                      ("builtins", "set"), ("fractions", "Fraction"),
                      ("decimal", "Decimal")})


class _Pickler(pickle.Pickler):
    """Pickles sockets and ``Fd``s as references to the descriptors sent beside."""

    def __init__(self, file: io.BytesIO, fds: list[int],
                 holders: list[socket.socket | Fd]) -> None:
        super().__init__(file, protocol=5)
        self.fds = fds
        #: What holds each descriptor of ``fds``: the socket object, or the ``Fd`` itself.
        self.holders = holders

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, socket.socket):
            self.fds.append(obj.fileno())
            self.holders.append(obj)
            return ("socket", len(self.fds) - 1, int(obj.family), int(obj.type), obj.proto)
        if isinstance(obj, Fd):
            self.fds.append(int(obj))
            self.holders.append(obj)
            return ("fd", len(self.fds) - 1)
        return None


class _Unpickler(pickle.Unpickler):
    """Turns descriptor references back into objects; ``restricted``: only this package's
    classes and functions (and ``functools.partial``) may be named."""

    def __init__(self, file: io.BytesIO, fds: list[int], restricted: bool) -> None:
        super().__init__(file)
        self.fds = fds
        self.restricted = restricted
        #: The socket objects made so far, by index into ``fds``: each owns its descriptor.
        self.sockets: dict[int, socket.socket] = {}

    def persistent_load(self, pid: Any) -> Any:
        kind, index = pid[0], pid[1]
        fd = self.fds[index]
        if kind == "socket":
            if index not in self.sockets:
                self.sockets[index] = socket.socket(pid[2], pid[3], pid[4], fileno=fd)
            return self.sockets[index]
        return Fd(fd)

    def holders(self) -> list[socket.socket | Fd]:
        """What holds each received descriptor (``release`` closes them): the socket
        object made of it, else the bare descriptor."""
        return [self.sockets.get(i) or Fd(fd) for i, fd in enumerate(self.fds)]

    def find_class(self, module: str, name: str) -> Any:
        if self.restricted and not (module == "pytest_nsbox"
                                    or module.startswith("pytest_nsbox.")
                                    or (module, name) in _ALLOWED):
            raise pickle.UnpicklingError(f"the nsbox agent runs this package's functions "
                                         f"only, not {module}.{name}")
        return super().find_class(module, name)


def send(sock: socket.socket, obj: object, lead: list[int] | None = None,
         held: list[socket.socket | Fd] | None = None) -> None:
    """Send ``obj`` as one message; ``lead`` descriptors go first, then those of the
    sockets and ``Fd``s in ``obj``. ``held`` gets what holds the latter (the socket
    objects and the ``Fd``s, for ``release``) as they are found, so a caller has them
    even when sending fails."""
    fds: list[int] = []
    buf = io.BytesIO()
    _Pickler(buf, fds, held if held is not None else []).dump(obj)
    every = list(lead or []) + fds
    if len(every) > MAX_FDS:
        raise BoxError(f"nsbox agent: a message with {len(every)} file descriptors "
                       f"(at most {MAX_FDS})")
    data = buf.getvalue()
    if len(data) > MAX_MESSAGE:
        raise BoxError(f"nsbox agent: a message of {len(data)} bytes (at most {MAX_MESSAGE})")
    ancillary = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", every))]
                 if every else [])
    sock.sendmsg([data], ancillary)


def release(holders: list[socket.socket | Fd]) -> None:
    """Close each descriptor once, through what holds it: a socket object's own
    ``close()`` (closing its number behind its back would let its finalizer close the
    number again later, by then another thread's descriptor), else ``os.close``."""
    done: set[int] = set()
    for holder in holders:
        number = holder.fileno() if isinstance(holder, socket.socket) else int(holder)
        if number < 0 or number in done:
            continue  # a socket already closed, or a number closed above
        done.add(number)
        try:
            if isinstance(holder, socket.socket):
                holder.close()
            else:
                os.close(holder)
        except OSError:
            pass


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message's bytes and descriptors (CLOEXEC); ``(b"", [])`` at EOF."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_LEN(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return b"", []
    return data, list(fds)


def loads(data: bytes, fds: list[int], restricted: bool) -> Any:
    """The object of a message; its sockets own their descriptors (see ``loads_owned``)."""
    return _Unpickler(io.BytesIO(data), fds, restricted).load()


def loads_owned(data: bytes, fds: list[int],
                restricted: bool) -> tuple[Any, list[socket.socket | Fd]]:
    """``loads``, and what holds every descriptor that came with the message (socket
    objects made of them, else the bare ``Fd``), for ``release`` once the object is done
    with; on an unpickling error the descriptors are closed and the error raised."""
    unpickler = _Unpickler(io.BytesIO(data), fds, restricted)
    try:
        return unpickler.load(), unpickler.holders()
    except BaseException:
        release(unpickler.holders())
        raise


class Agent:
    """The owner's end: ``call`` runs a function in the agent (module docstring)."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], T], *, what: str, netns: int | str = KEEP,
             timeout: float = 30.0) -> T:
        """``fn()`` in the agent, in network namespace ``netns`` (a descriptor, ``KEEP``
        or ``NEW``); its value, or its exception raised here.

        Raises ``TimeoutError`` when no answer comes within ``timeout`` seconds and
        ``BoxError`` when the agent is gone; ``what`` names the call in both.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            where: object = Fd(netns) if isinstance(netns, int) else netns
            try:
                with self._lock:
                    send(self.sock, (what, where, fn), [theirs.fileno()])
            except OSError as exc:
                raise BoxError(f"{what}: the nsbox agent (pid {self.pid}) is gone: "
                               f"{exc.strerror or exc}") from None
        finally:
            theirs.close()
        try:
            if not readable([ours.fileno()], timeout):
                raise TimeoutError(f"{what}: the nsbox agent (pid {self.pid}) did not answer "
                                   f"within {timeout:g} s")
            data, fds = receive(ours)
        finally:
            ours.close()
        if not data:
            raise BoxError(f"{what}: the nsbox agent (pid {self.pid}) died before answering")
        ok, value = loads(data, fds, restricted=False)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ``BoxError`` naming it."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:  # noqa: BLE001 - any failure means: send a plain one instead
        return BoxError(f"{type(exc).__name__}: {exc}")
    return exc
