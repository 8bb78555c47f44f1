"""The owner's side of the zygote: one per process, asked for boxes.

Spawning the zygote uses ``subprocess`` (fork+exec in C, safe in a threaded process); no
Python code ever runs in a fork of the pytest process.

Nothing the zygote starts outlives it. It is spawned as PID 1 of a new PID namespace
(``unshare(CLONE_NEWPID)`` in the spawning thread around the fork+exec, then ``setns`` back),
so its spares and boxes are processes of that namespace: when the zygote exits, or is
killed, the kernel kills every one of them and the zygote reaps them before its own exit
is reported (pid_namespaces(7), "The namespace init process"). Waiting for the zygote is
therefore waiting for all of them, and nothing is reparented to the host's PID 1.

One zygote per process, whatever happens to ``sys.modules``: pytester restores
``sys.modules`` after each in-process run, so this module may be imported again; its state
lives in a registry on the ``sys`` module (never reimported), keyed by PID so a forked child
starts its own. Every configured pytest session of the process holds the zygote
(``hold``/``release``); the last release closes it, and so does interpreter exit.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
    import subprocess
    from typing import TypedDict

    from .agent import Agent
    from .protocol import BoxPlan

    class _Registry(TypedDict):
        locks: dict[int, threading.Lock]
        clients: dict[int, ZygoteClient]  # owner pid: its zygote
        holders: dict[int, int]  # owner pid: configured sessions holding the zygote
        hooked: bool  # the exit and fork handlers are registered

#: Seconds to wait for the zygote's reply to a request.
REPLY_TIMEOUT = 30.0
#: Seconds ``close`` waits for the zygote to exit after EOF, then again after SIGKILL.
CLOSE_TIMEOUT = 5.0
#: The attribute of ``sys`` that holds the registry (see the module docstring).
REGISTRY_ATTR = "_pytest_nsbox_zygotes"


class ZygoteClient:
    """One zygote process and the lock that serializes requests to it; for a rootless
    owner also the agent in the boxes' user namespace (``agent``, else None)."""

    def __init__(self) -> None:
        from ..kernel import userns
        from .plan import PACKAGE_PARENT
        from . import protocol

        self.lock = threading.Lock()
        self.owner = os.getpid()
        self.closed = False
        self.agent: Agent | None = None
        ours, theirs = protocol.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        try:
            if userns.rootless():
                self.proc, self.agent = _spawn_rootless(theirs, env)
            else:
                # argv[0] is what `ps` in a box shows for its PID 1 (a fork of the zygote).
                self.proc = _spawn_namespace_init(
                    ["nsbox-init", "-s", "-m", "pytest_nsbox.runtime.zygote",
                     str(theirs.fileno())], env=env, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock: socket.socket = ours

    def create(self, plan: BoxPlan, box_end: socket.socket) -> tuple[int, int]:
        """Fork a box running ``plan``; returns its host PID and a pidfd for it.

        Raises ``BoxError`` when the zygote does not answer within ``REPLY_TIMEOUT``
        seconds, has died, or could not start the box.
        """
        from ..errors import BoxError
        from ..kernel.io import readable
        from . import protocol

        with self.lock:
            protocol.send(self.sock, protocol.CreateBox(plan=plan), [box_end.fileno()])
            if not readable([self.sock.fileno()], REPLY_TIMEOUT):
                raise BoxError(f"the nsbox zygote (pid {self.proc.pid}) did not answer "
                               f"within {REPLY_TIMEOUT:.0f} s")
            msg, fds = protocol.recv(self.sock)
        if msg is None:
            raise BoxError(f"the nsbox zygote (pid {self.proc.pid}) died; "
                           f"exit status {self.proc.poll()}")
        if isinstance(msg, protocol.BoxCreated):
            return msg.pid, fds[0]
        for fd in fds:
            os.close(fd)
        if isinstance(msg, protocol.CreateFailed):
            raise BoxError(msg.error)
        raise protocol.unexpected(msg, "the zygote's owner")

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the zygote and wait for it (bounded): EOF on its control socket makes it
        kill and reap its spare and every box; after ``timeout`` seconds it is SIGKILLed,
        which as its namespace's init takes the same processes with it. Idempotent.
        Rootless, the process waited for is the user namespace's first one
        (``rootless.py``), which ends with the zygote; killed, it takes the zygote along
        (``PR_SET_PDEATHSIG``)."""
        import subprocess

        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.agent is not None:
            self.agent.sock.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)

    def forget(self) -> None:
        """In a forked child: drop the parent's zygote without touching it (only this
        process's copy of the control socket is closed, so the zygote still sees EOF
        when its owner goes)."""
        self.closed = True
        self.sock.close()
        if self.agent is not None:
            self.agent.sock.close()

    @property
    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None


def _spawn_rootless(ctl: socket.socket, env: dict[str, str]
                    ) -> tuple[subprocess.Popen[bytes], Agent]:
    """Start the zygote in a user namespace of its own (``rootless.py``): spawn that
    namespace's first process, map its IDs from here (``kernel.userns.apply_maps``: this
    process owns the namespace), and wait until the zygote runs. Returns the process to
    wait for and the ``Agent`` it serves.

    Raises ``HostNotSupported`` with the fix-it line when the namespace cannot be made or
    mapped (``kernel.userns.diagnose``), ``BoxError`` when the process dies or does not
    answer within ``REPLY_TIMEOUT`` seconds.
    """
    import subprocess

    from ..errors import BoxError, HostNotSupported
    from ..kernel import userns
    from ..kernel.io import readable
    from . import protocol
    from .agent import Agent
    from .rootless import hear, tell

    ours, theirs = protocol.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "pytest_nsbox.runtime.rootless", str(ctl.fileno()),
             str(theirs.fileno())], env=env, pass_fds=(ctl.fileno(), theirs.fileno()),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()

    def answer(stage: str) -> dict[str, object]:
        if not readable([ours.fileno()], REPLY_TIMEOUT):
            raise BoxError(f"the nsbox user namespace process (pid {proc.pid}) did not "
                           f"answer within {REPLY_TIMEOUT:.0f} s ({stage})")
        msg = hear(ours)
        if msg is None:
            raise BoxError(f"the nsbox user namespace process (pid {proc.pid}) died "
                           f"({stage}); exit status {proc.poll()}")
        if "failed" in msg:
            code = int(str(msg.get("errno") or 0))
            raise HostNotSupported(userns.diagnose(str(msg["failed"]),
                                                   OSError(code, os.strerror(code))))
        return msg

    try:
        pid = int(str(answer("making the user namespace")["unshared"]))
        try:
            userns.apply_maps(pid, userns.current_maps())
        except userns.UsernsError as exc:
            raise HostNotSupported(exc.strerror or str(exc)) from None
        tell(ours, {"mapped": True})
        if "ready" not in answer("starting the zygote"):
            raise BoxError(f"the nsbox user namespace process (pid {proc.pid}) answered "
                           f"out of turn")
    except BaseException:
        ours.close()
        proc.kill()
        proc.wait()
        raise
    return proc, Agent(ours, proc.pid)


def agent() -> Agent | None:
    """The agent of this process's zygote (started if need be) when boxes are rootless;
    None for an owner that is root."""
    from ..kernel import userns

    if not userns.rootless():
        return None
    return zygote().agent


def _spawn_namespace_init(argv: list[str], env: dict[str, str],
                          pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    """``Popen(argv)`` running this Python, as PID 1 of a new PID namespace when this
    process may make one (CAP_SYS_ADMIN); else as a plain child (its children then die
    by ``PR_SET_PDEATHSIG`` but are reparented to the host's PID 1 to be reaped).

    ``unshare(CLONE_NEWPID)`` changes only the calling thread's namespace for new
    children (``pid_for_children``), and it is set back before returning, so no other
    thread's fork is affected.
    """
    import subprocess

    from ..kernel import libc

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, executable=sys.executable, env=env, pass_fds=pass_fds,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True)

    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            libc.unshare(libc.CLONE_NEWPID)
        except OSError:
            return popen()
        try:
            return popen()
        finally:
            libc.setns(own, libc.CLONE_NEWPID)
    finally:
        os.close(own)


# -- the process-wide registry ----------------------------------------------------------------

def _registry() -> _Registry:
    """The registry on ``sys``, made by the first caller.

    Everything in it is keyed by the owning PID: a forked child inherits a copy in which
    its own PID has no zygote, no holders and a lock nobody holds, whatever the parent's
    threads were doing at the fork. It holds only builtin objects until the first zygote:
    an object of ours referenced from ``sys`` (or from ``atexit``) keeps this module's
    globals alive into interpreter finalization, which costs every pytest process about
    15 ms at exit (measured, CPython 3.11), and a session with no box must not pay that.
    """
    found: _Registry | None = getattr(sys, REGISTRY_ATTR, None)
    if found is not None:
        return found
    fresh: _Registry = {"locks": {}, "clients": {}, "holders": {}, "hooked": False}
    registry: _Registry = sys.__dict__.setdefault(REGISTRY_ATTR, fresh)  # one caller wins
    return registry


def _lock(registry: _Registry) -> threading.Lock:
    return registry["locks"].setdefault(os.getpid(), threading.Lock())  # atomic under the GIL


def _hook(registry: _Registry) -> None:
    """At the first zygote: close it at interpreter exit, and drop it in forked children
    (registered only then: see ``_registry``)."""
    if not registry["hooked"]:
        registry["hooked"] = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(shutdown)


def _after_fork_in_child() -> None:
    """A forked child starts with no zygote: the parent's stays the parent's, and the
    child's copy of its control socket is closed so the zygote still sees EOF when its
    owner goes."""
    registry: _Registry | None = getattr(sys, REGISTRY_ATTR, None)
    if registry is None:
        return
    pid = os.getpid()
    for owner in [o for o in registry["clients"] if o != pid]:
        registry["clients"].pop(owner).forget()


def zygote() -> ZygoteClient:
    """This process's zygote, started on first use (and anew after it died).

    A dead one is reaped before the new one starts. Raises ``OSError`` when the zygote
    cannot be spawned.
    """
    registry = _registry()
    pid = os.getpid()
    with _lock(registry):
        client = registry["clients"].get(pid)
        if client is None or not client.alive:
            if client is not None:
                client.close()
            _hook(registry)
            client = ZygoteClient()
            registry["clients"][pid] = client
        return client


def hold() -> None:
    """A pytest session of this process starts using the zygote (at configure)."""
    registry = _registry()
    pid = os.getpid()
    with _lock(registry):
        registry["holders"][pid] = registry["holders"].get(pid, 0) + 1


def release() -> None:
    """A session is done with the zygote (at unconfigure); the last one closes it."""
    registry = _registry()
    pid = os.getpid()
    with _lock(registry):
        left = registry["holders"].get(pid, 0) - 1
        if left > 0:
            registry["holders"][pid] = left
            return
        registry["holders"].pop(pid, None)
        client = registry["clients"].pop(pid, None)
    if client is not None:
        client.close()


def shutdown() -> None:
    """Close this process's zygote now, whoever holds it (the next box starts a new one)."""
    registry = _registry()
    with _lock(registry):
        client = registry["clients"].pop(os.getpid(), None)
    if client is not None:
        client.close()
