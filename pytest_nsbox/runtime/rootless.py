"""The first process of a rootless owner's user namespace: it starts the zygote there and
serves the owner's agent calls (``agent.py``).

A rootless owner (``kernel.userns.rootless()``) does not spawn the zygote itself; its
``client`` spawns this module with two sockets, the zygote's control socket and the agent
socket, and they go through these steps (the way bubblewrap's ``--userns-block-fd`` waits
for a parent that runs ``newuidmap``, ``demos/userns-block-fd.py``)::

    this process                               the owner (client.ZygoteClient)
    unshare(CLONE_NEWUSER)
    {"unshared": pid}              ------->
                                               kernel.userns.apply_maps(pid, maps)
                                   <-------    {"mapped": true}
    fork: [unshare(CLONE_NEWPID), fork: exec the zygote as PID 1 of that namespace]
    {"ready": waiter pid}          ------->
    serve agent calls until the zygote's end

The zygote is exec'd inside the user namespace, so its memory belongs to it (the kernel's
``mm->user_ns``): a box's init is not dumpable, and only a process with ``CAP_SYS_PTRACE``
over that namespace (the owner, its creator) may open its ``/proc/<pid>/root``.

The zygote cannot be this process's child directly: a PID namespace applies to children
made after ``unshare(CLONE_NEWPID)``, and this process, which goes on to run threads, could
not ``setns`` back into the host's PID namespace (a namespace its user namespace does not
own), and no thread may be made while ``pid_for_children`` differs (clone(2): EINVAL). So a
forked waiter makes the PID namespace and its only child, the zygote, and exits with it;
each dies by ``PR_SET_PDEATHSIG`` with its parent, and this process exits when the waiter
does. A step that fails is reported as ``{"failed": step, "errno": n}`` before the exit.

Stdlib, ``kernel`` and ``agent`` only; the functions calls name are imported when called.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

from ..errors import BoxError
from ..kernel import libc
from ..network.netns import Fd
from . import agent

#: argv[0] of this process (``comm`` is set to it, shortened).
NAME = "nsbox-userns"


def tell(sock: socket.socket, obj: dict[str, Any]) -> None:
    """One handshake message (a JSON object)."""
    sock.sendall(json.dumps(obj).encode())


def hear(sock: socket.socket) -> dict[str, Any] | None:
    """The next handshake message; None at EOF or for one that is not a JSON object."""
    data = sock.recv(4096)
    if not data:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _fail(sock: socket.socket, step: str, exc: OSError) -> NoReturn:
    try:
        tell(sock, {"failed": step, "errno": exc.errno or 0})
    finally:
        os._exit(1)


def _die_with_parent(parent: int | None) -> None:
    """``PR_SET_PDEATHSIG``; ``parent``: exit if it died before that took hold (None: a
    PID namespace's init, whose parent is outside it and reads as 0; it also ends at EOF
    on its control socket)."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def start_zygote(ctl_fd: int, close: list[int]) -> int:
    """Fork the waiter (module docstring); returns its pid. ``close``: descriptors the
    waiter and the zygote must not keep (the agent socket)."""
    me = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        _die_with_parent(me)
        for fd in close:
            os.close(fd)
        libc.unshare(libc.CLONE_NEWPID)
        child = os.fork()
        if child == 0:
            _die_with_parent(None)
            os.set_inheritable(ctl_fd, True)
            # argv[0] is what `ps` in a box shows for its PID 1 (a fork of the zygote).
            os.execv(sys.executable, ["nsbox-init", "-s", "-m", "pytest_nsbox.runtime.zygote",
                                      str(ctl_fd)])
        os.close(ctl_fd)
        libc.set_comm("nsbox-pidns")
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    except BaseException:
        os._exit(127)


def _run_call(data: bytes, reply: socket.socket, fds: list[int]) -> None:
    """One agent call, in this thread (agent.py): enter its network namespace, run it,
    answer; every descriptor that came with it, and every one the answer carried, is
    closed here."""
    from ..network.errors import NetworkError

    result: tuple[bool, object]
    what = "a call"
    received: list[socket.socket | Fd] = []
    try:
        call, received = agent.loads_owned(data, fds, restricted=True)  # closes on error
        what, netns, fn = call
        try:
            if netns == agent.NEW:
                libc.unshare(libc.CLONE_NEWNET)
            elif isinstance(netns, int):
                libc.setns(netns, libc.CLONE_NEWNET)
        except OSError as exc:
            raise NetworkError(f"{what}: cannot enter the network namespace: {exc}") from None
        result = (True, fn())
    except BaseException as exc:  # noqa: BLE001 - handed whole to the owner
        result = (False, agent.portable(exc))
    finally:
        agent.release(received)
    sent: list[socket.socket | Fd] = []
    try:
        agent.send(reply, result, held=sent)
    except BaseException as exc:  # noqa: BLE001 - e.g. a value that does not pickle
        try:
            agent.send(reply, (False, BoxError(f"{what}: the nsbox agent cannot send its "
                                               f"answer: {exc}")))
        except OSError:
            pass
    finally:
        agent.release(sent)
        reply.close()


def serve(sock: socket.socket) -> None:
    """Agent calls until EOF, each in a thread of its own (calls may wait on each other,
    e.g. a connect while the network is being built)."""
    while True:
        data, fds = agent.receive(sock)
        if not data:
            return
        if not fds:
            continue  # no answer socket: nobody waits for it
        reply = socket.socket(fileno=fds[0])
        threading.Thread(target=_run_call, args=(data, reply, fds[1:]), daemon=True,
                         name="nsbox-agent call").start()


def _exit_with(waiter: int) -> None:
    _, status = os.waitpid(waiter, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main(argv: list[str]) -> None:
    ctl_fd, agent_fd = int(argv[1]), int(argv[2])
    sock = socket.socket(fileno=agent_fd)
    os.set_inheritable(agent_fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc.set_comm(NAME)
    try:
        libc.unshare(libc.CLONE_NEWUSER)
    except OSError as exc:
        _fail(sock, "unshare(CLONE_NEWUSER)", exc)
    tell(sock, {"unshared": os.getpid()})
    answer = hear(sock)
    if not answer or not answer.get("mapped"):
        os._exit(1)  # the owner could not map us, and says why itself
    try:
        waiter = start_zygote(ctl_fd, [agent_fd])
    except OSError as exc:
        _fail(sock, "fork", exc)
    os.close(ctl_fd)
    tell(sock, {"ready": waiter})
    ending = threading.Thread(target=_exit_with, args=(waiter,), daemon=True,
                              name="nsbox-userns waiter")
    ending.start()
    serve(sock)
    ending.join()  # the owner is gone: the zygote saw its EOF too, and ends


if __name__ == "__main__":
    main(sys.argv)
