"""The zygote: a small single-threaded process that forks boxes on request.

The pytest process may run threads (xdist's execnet, a test's own); forking it could
deadlock the child, and costs its whole address space. So one zygote per owning process is
started with a fresh interpreter, imports only what a box's init needs, and forks each box
from there. Each fork lands directly in a new PID namespace (``unshare(CLONE_NEWPID)`` in
the zygote, then ``setns`` back to its own), so the box's PID 1 is the zygote's child and
``PR_SET_PDEATHSIG`` ties it to the zygote. When the owner goes away (EOF on the control
socket), the zygote kills every box it started and exits.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
from typing import Any

from ..syscalls import libc
from . import init, protocol


class Zygote:
    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.boxes: set[int] = set()
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def serve(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.ctl, self.wake_r], [], [])
                if self.wake_r in ready:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                if self.ctl in ready:
                    msg, fds = protocol.recv(self.ctl)
                    if msg is None:
                        return
                    self.handle(msg, fds)
        finally:
            for pid in self.boxes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.boxes.discard(pid)

    def handle(self, msg: dict[str, Any], fds: list[int]) -> None:
        if msg.get("op") != "create" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            protocol.send(self.ctl, {"error": f"bad request {msg.get('op')!r}"})
            return
        box_fd = fds[0]
        try:
            pid = self.fork_box(msg["plan"], box_fd)
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            protocol.send(self.ctl, {"error": f"cannot start box: {exc}"})
            return
        finally:
            os.close(box_fd)
        self.boxes.add(pid)
        try:
            protocol.send(self.ctl, {"pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def fork_box(self, plan: dict[str, Any], box_fd: int) -> int:
        libc.unshare(libc.CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                self.become_box(plan, box_fd)
        finally:
            libc.setns(self.own_pidns, libc.CLONE_NEWPID)
        return pid

    def become_box(self, plan: dict[str, Any], box_fd: int) -> None:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.ctl.fileno(), self.own_pidns, self.wake_r, self.wake_w):
                os.close(fd)
            self.ctl.detach()
        except BaseException:
            os._exit(1)
        init.boot(plan, box_fd)


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD only wakes the loop through the wakeup fd."""


def main(argv: list[str]) -> None:
    ctl = socket.socket(fileno=int(argv[1]))
    os.set_inheritable(ctl.fileno(), False)
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that spawned us exits, and the
    # owner may spawn us from any thread. EOF on the control socket is the owner's death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc.set_comm("nsbox-init")
    Zygote(ctl).serve()


if __name__ == "__main__":
    main(sys.argv)
