"""Reaching a box from the test process: ``connect``, ``wait_for_port``, ``forward``.

All three work for every ``network`` mode, since they use the box's own namespace rather
than an address the host can route to: ``connect`` makes its socket in a thread that has
entered the box's network namespace (a socket keeps the namespace it was made in; a
rootless owner's agent makes it there and passes it back), so it
reaches whatever listens on the box's loopback or its ``eth0``. ``wait_for_port`` looks for
a listening socket in the box's ``/proc/<pid>/net/tcp{,6}``, so it never uses up a one-shot
server such as ``nc -l``. ``forward`` listens on the host's 127.0.0.1 and relays each
connection through ``connect``.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from ..kernel.io import readable
from ..errors import BoxClosed, NsboxError, SpecError
from . import netns
from .errors import PortRefused, PortTimeout

if TYPE_CHECKING:
    from .handle import BoxHandle

#: Polls start this often and back off, doubling, to at most BACKOFF_MAX.
BACKOFF_START = 0.005
BACKOFF_MAX = 0.2
#: One connect attempt without a caller's timeout (a local connect answers at once).
ATTEMPT_TIMEOUT = 10.0
#: A forward's threads get this long to finish at close.
JOIN_TIMEOUT = 5.0
BUFSIZE = 65536
TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10


def check_port(port: object, source: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SpecError("port", port, "not a TCP port (1 to 65535)", "8080", source=source)
    return port


def check_timeout(timeout: object, source: str) -> float:
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0 < timeout < float("inf")):
        raise SpecError("timeout", timeout, "not a number of seconds above 0", "10",
                        source=source)
    return float(timeout)


def _targets(box: BoxHandle) -> list[tuple[int, str]]:
    """``(address family, address)`` of the box to try, loopback first (plain ints: they
    travel to a rootless owner's agent)."""
    targets = [(int(socket.AF_INET), "127.0.0.1"), (int(socket.AF_INET6), "::1")]
    if box.ip:
        targets.append((int(socket.AF_INET), box.ip))
    return targets


def _attempt(targets: list[tuple[int, str]], port: int,
             limit: float) -> tuple[socket.socket | None, OSError | None]:
    """One connect to each of ``targets``; the first socket that connects, else the last
    error. Runs inside the box's network namespace (a ``netns.Runner`` puts it there)."""
    last: OSError | None = None
    for family, host in targets:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no IPv6 in this kernel
            last = exc
            continue
        sock.settimeout(max(limit, 0.001))
        try:
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.settimeout(None)
        return sock, None
    return None, last


def _why(exc: OSError | None) -> str:
    if exc is None:
        return "no address to try"
    return exc.strerror or type(exc).__name__


def connect(box: BoxHandle, port: int, timeout: float | None = None) -> socket.socket:
    """A TCP socket connected to ``port`` in the box's network namespace.

    Without ``timeout``: one try, ``PortRefused`` if nothing listens. With one: retried
    (backing off) until it connects or ``timeout`` seconds pass (``PortTimeout``). Each
    try runs in the box's namespace through ``box.netns_runner``; the waits between them
    run here.
    """
    port = check_port(port, "connect")
    limit = None if timeout is None else check_timeout(timeout, "connect")
    deadline = None if limit is None else time.monotonic() + limit
    ns_fd = netns.open_box_netns(box)
    try:
        delay = BACKOFF_START
        while True:
            left = ATTEMPT_TIMEOUT if deadline is None else deadline - time.monotonic()
            sock, last = box.netns_runner.run_in(
                ns_fd, partial(_attempt, _targets(box), port, min(left, ATTEMPT_TIMEOUT)),
                f"box {box.name!r}: connecting to port {port}",
                timeout=ATTEMPT_TIMEOUT + netns.OP_TIMEOUT)
            if sock is not None:
                return sock
            if deadline is None:
                raise PortRefused(f"box {box.name!r}: nothing accepts TCP connections on "
                                  f"port {port} ({_why(last)})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise PortTimeout(f"box {box.name!r}: nothing accepted TCP connections on "
                                  f"port {port} within {limit:g} s ({_why(last)})")
            if not box.alive():
                raise BoxClosed(f"box {box.name!r} closed while connecting to port {port}")
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX)
    finally:
        os.close(ns_fd)


def parse_listening(table: str) -> set[int]:
    """The ports in LISTEN state in a ``/proc/net/tcp`` or ``tcp6`` table."""
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == TCP_LISTEN:
            try:
                ports.add(int(fields[1].rpartition(":")[2], 16))
            except ValueError:
                continue
    return ports


def listening(box: BoxHandle) -> set[int]:
    """The TCP ports something listens on in the box's network namespace."""
    try:
        dfd = os.open(f"/proc/{box.pid}/net", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BoxClosed(f"box {box.name!r}: its init (pid {box.pid}) is gone: "
                        f"{exc.strerror}") from None
    try:
        if not box.alive():  # the PID may have been reused by now
            raise BoxClosed(f"box {box.name!r} is closed")
        ports: set[int] = set()
        for name in ("tcp", "tcp6"):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:  # no IPv6
                continue
            with os.fdopen(fd, encoding="ascii", errors="replace") as f:
                ports |= parse_listening(f.read())
        return ports
    finally:
        os.close(dfd)


def wait_for_port(box: BoxHandle, port: int, timeout: float) -> None:
    """Return once something listens on TCP ``port`` in the box; ``PortTimeout`` after
    ``timeout`` seconds. Polls (backing off from 5 ms to 200 ms); never connects."""
    port = check_port(port, "wait_for_port")
    limit = check_timeout(timeout, "wait_for_port")
    deadline = time.monotonic() + limit
    delay = BACKOFF_START
    while True:
        if not box.alive():
            raise BoxClosed(f"box {box.name!r} is closed (waiting for port {port})")
        if port in listening(box):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise PortTimeout(f"box {box.name!r}: nothing listened on TCP port {port} "
                              f"within {limit:g} s")
        time.sleep(min(delay, left))
        delay = min(delay * 2, BACKOFF_MAX)


class Forward:
    """A listening socket on the host's 127.0.0.1 relaying every connection to the box."""

    def __init__(self, box: BoxHandle, port: int) -> None:
        self.box = box
        self.port = port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(128)
            self.address: tuple[str, int] = ("127.0.0.1", self._listener.getsockname()[1])
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            self._listener.close()
            raise
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._relays: list[threading.Thread] = []
        self._acceptor = threading.Thread(
            target=self._serve, daemon=True,
            name=f"nsbox-forward {self.address[1]}->{box.name}:{port}")
        self._acceptor.start()

    def _serve(self) -> None:
        while True:
            ready = readable([self._listener.fileno(), self._wake_r], None)
            if self._wake_r in ready:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            relay = threading.Thread(target=self._relay, args=(client,), daemon=True,
                                     name=f"nsbox-forward relay ->{self.box.name}:{self.port}")
            with self._lock:
                self._relays = [t for t in self._relays if t.is_alive()]
                self._relays.append(relay)
            relay.start()

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                for s in socks:
                    s.close()
                return False
            self._sockets.update(socks)
            return True

    def _relay(self, client: socket.socket) -> None:
        if not self._track(client):
            return
        try:
            try:
                upstream = connect(self.box, self.port)
            except (NsboxError, OSError):
                return  # the client sees its connection closed, as from a dead server
            if not self._track(upstream):
                return
            try:
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join()
            finally:
                self._drop(upstream)
        finally:
            self._drop(client)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._sockets)
            relays = list(self._relays)
        os.write(self._wake_w, b"x")
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        for sock in live:
            _shutdown(sock)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for relay in relays:
            relay.join(max(deadline - time.monotonic(), 0))
        os.close(self._wake_r)
        os.close(self._wake_w)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``; an error ends both."""
    try:
        while True:
            data = src.recv(BUFSIZE)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        _shutdown(src)
        _shutdown(dst)


def forward(box: BoxHandle, port: int) -> tuple[str, int]:
    """Expose the box's ``port`` on the host's 127.0.0.1; closed with the box."""
    port = check_port(port, "forward")
    if not box.alive():
        raise BoxClosed(f"box {box.name!r} is closed")
    fwd = Forward(box, port)
    box.on_close(fwd.close)  # closed with the box (at once if it closed meanwhile)
    return fwd.address
