"""The single-threaded loop the zygote and every box's init run.

Requests arrive on a control socket as ``protocol`` messages; children's deaths arrive as
SIGCHLD through a wakeup pipe and are reaped here. EOF on the control socket (the owner is
gone) ends the loop; a message that is not a request this server knows raises
``protocol.ProtocolError`` out of ``serve``.
Imported by the box's init before pivot_root: stdlib only.
"""
from __future__ import annotations

import os
import signal
import socket
from ..kernel.io import readable
from . import protocol


class ChildServer:
    """Subclasses say what a request does (``handle``) and what a reaped child means
    (``exited``)."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def serve(self) -> None:
        while True:
            ready = readable([self.ctl.fileno(), self.wake_r], None)
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                self.reap()
            if self.ctl.fileno() in ready:
                msg, fds = self.receive()
                if msg is None:
                    return
                self.handle(msg, fds)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited(pid, status)

    def receive(self) -> tuple[protocol.Message | protocol.Frame | None, list[int]]:
        """The next request on the control socket, decoded (``(None, [])`` at EOF)."""
        return protocol.recv(self.ctl)

    def handle(self, msg: protocol.Message | protocol.Frame, fds: list[int]) -> None:
        """Act on one request; a kind this server has no handler for raises
        ``protocol.ProtocolError`` (``protocol.unexpected``), never dropped."""
        raise NotImplementedError

    def exited(self, pid: int, status: int) -> None:
        raise NotImplementedError


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD only wakes the loop through the wakeup fd."""
