"""The zygote: a small single-threaded process that forks boxes on request.

The pytest process may run threads (xdist's execnet, a test's own); forking it could
deadlock the child, and costs its whole address space. So one zygote per owning process is
started with a fresh interpreter, imports only what a box's init needs, and forks each box
from there. Each fork lands directly in a new PID namespace (``unshare(CLONE_NEWPID)`` in
the zygote, then ``setns`` back to its own), so the box's PID 1 is the zygote's child and
``PR_SET_PDEATHSIG`` ties it to the zygote.

The fork and the namespaces are made ahead of time: the zygote always holds one *spare*,
a child that has made its mount, UTS, IPC and network namespaces and waits for a plan. A
request hands its plan to the spare and a new spare is forked after the reply, off the
request's critical path.

Nothing outlives the zygote. The owner spawns it as PID 1 of a PID namespace of its own
(see ``client``), so every spare and box is a process of that namespace. When the owner
goes away (EOF on the control socket), the zygote kills every box it started and its spare,
reaps them (bounded), and exits; were it killed instead, its exit as the namespace's init
makes the kernel kill and reap them all the same (pid_namespaces(7)). A spare also dies by
``PR_SET_PDEATHSIG`` with it, and sees EOF on its socket if the zygote died before that was
set.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time

from ..kernel import libc, userns
from . import init, protocol
from .loop import ChildServer

#: Seconds the zygote waits, at its end, for its killed children to be reaped.
REAP_TIMEOUT = 3.0


class Spare:
    """A forked child, PID 1 of a fresh PID namespace, waiting on ``sock`` for its plan."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class Zygote(ChildServer):
    def __init__(self, ctl: socket.socket) -> None:
        super().__init__(ctl)
        self.boxes: set[int] = set()
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.spare: Spare | None = None
        # In a rootless owner's user namespace a spare leaves the network namespace to
        # the box (init.PREPARED_ROOTLESS).
        self.prepared = init.PREPARED_ROOTLESS if userns.rootless() else init.PREPARED

    def serve(self) -> None:
        try:
            self.spare = self.fork_spare()
            super().serve()
        finally:
            self.end_children()

    def end_children(self) -> None:
        """SIGKILL the spare and every box, and reap them, waiting at most
        ``REAP_TIMEOUT`` seconds (a process stuck in the kernel is left to the kernel,
        which kills it when this namespace's init exits)."""
        pids = set(self.boxes)
        if self.spare is not None:
            pids.add(self.spare.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + REAP_TIMEOUT
        self.reap()
        while (self.boxes or self.spare is not None) and time.monotonic() < deadline:
            time.sleep(0.002)
            self.reap()

    def exited(self, pid: int, status: int) -> None:
        self.boxes.discard(pid)
        if self.spare is not None and self.spare.pid == pid:
            self.spare.sock.close()
            self.spare = None

    def receive(self) -> tuple[protocol.Message | protocol.Frame | None, list[int]]:
        """Requests are only peeked: a ``CreateBox`` goes on to the spare as it came."""
        return protocol.recv_frame(self.ctl)

    def handle(self, msg: protocol.Message | protocol.Frame, fds: list[int]) -> None:
        """``CreateBox``: hand its plan and fd to the spare, answer ``BoxCreated`` with a
        pidfd (or ``CreateFailed``). Any other message is a ``ProtocolError``."""
        if not (isinstance(msg, protocol.Frame) and msg.kind == protocol.CreateBox.kind):
            for fd in fds:
                os.close(fd)
            raise protocol.unexpected(msg, "the nsbox zygote")
        box_fd = fds[0]
        try:
            spare = self.spare or self.fork_spare()
            self.spare = None
            pidfd = os.pidfd_open(spare.pid)
            try:
                protocol.send_frame(spare.sock, msg, [box_fd])
            finally:
                spare.sock.close()
        except OSError as exc:
            protocol.send(self.ctl, protocol.CreateFailed(error=f"cannot start box: {exc}"))
            return
        finally:
            os.close(box_fd)
        self.boxes.add(spare.pid)
        try:
            protocol.send(self.ctl, protocol.BoxCreated(pid=_outer_pid(pidfd, spare.pid)), [pidfd])
        finally:
            os.close(pidfd)
        self.spare = self.fork_spare()  # after the reply: off the request's critical path

    def fork_spare(self) -> Spare:
        ours, theirs = protocol.socketpair()
        host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.unshare(libc.CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    os.close(ours.detach())  # else the spare never sees the zygote's EOF
                    self.become_box(theirs, host_netns)
            finally:
                libc.setns(self.own_pidns, libc.CLONE_NEWPID)
        finally:
            os.close(host_netns)
            theirs.close()
        return Spare(pid, ours)

    def become_box(self, sock: socket.socket, host_netns: int) -> None:
        """In the spare: make the namespaces, then wait for a plan (or the zygote's death)."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.ctl.fileno(), self.own_pidns, self.wake_r, self.wake_w):
                os.close(fd)
            self.ctl.detach()
            init.prepare(host_netns, self.prepared)
            msg, fds = protocol.recv(sock)
            sock.close()
        except BaseException:
            os._exit(1)
        if not isinstance(msg, protocol.CreateBox):  # EOF: the zygote is gone
            os._exit(0)
        init.boot(msg.plan, fds[0])


def _outer_pid(pidfd: int, pid: int) -> int:
    """The PID of ``pidfd``'s process as the owner sees it.

    ``pid`` is the number in this zygote's own PID namespace; ``/proc`` here is still the
    owner's, and a pidfd's ``fdinfo`` gives its ``Pid:`` in the namespace of that ``/proc``
    (kernel ``pidfd_show_fdinfo``).
    """
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def main(argv: list[str]) -> None:
    ctl = socket.socket(fileno=int(argv[1]))
    os.set_inheritable(ctl.fileno(), False)
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that spawned us exits, and the
    # owner may spawn us from any thread. EOF on the control socket is the owner's death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc.set_comm("nsbox-init")
    init.warm()
    # Everything imported so far is shared with every box: keep the collector from
    # touching (and so copying) those pages in the children.
    gc.freeze()
    Zygote(ctl).serve()


if __name__ == "__main__":
    main(sys.argv)
