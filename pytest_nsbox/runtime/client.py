"""The owner's side of the zygote: start it once per process, ask it for boxes.

Spawning the zygote uses ``subprocess`` (fork+exec in C, safe in a threaded process); no
Python code ever runs in a fork of the pytest process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import BoxError
from ..rootfs.plan import PACKAGE_PARENT
from . import protocol

REPLY_TIMEOUT = 30.0


class ZygoteClient:
    """One zygote process and the lock that serializes requests to it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner = os.getpid()
        ours, theirs = protocol.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        try:
            # argv[0] is what `ps` in a box shows for its PID 1 (a fork of the zygote).
            self.proc = subprocess.Popen(
                ["nsbox-init", "-s", "-m", "pytest_nsbox.runtime.zygote", str(theirs.fileno())],
                executable=sys.executable, env=env,
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        self.sock = ours

    def create(self, plan: dict[str, Any], box_end: socket.socket) -> tuple[int, int]:
        """Fork a box running ``plan``; returns its host PID and a pidfd for it."""
        with self.lock:
            protocol.send(self.sock, {"op": "create", "plan": plan}, [box_end.fileno()])
            if not protocol.readable([self.sock.fileno()], REPLY_TIMEOUT):
                raise BoxError(f"the nsbox zygote (pid {self.proc.pid}) did not answer "
                               f"within {REPLY_TIMEOUT:.0f} s")
            msg, fds = protocol.recv(self.sock)
        if msg is None:
            raise BoxError(f"the nsbox zygote (pid {self.proc.pid}) died; "
                           f"exit status {self.proc.poll()}")
        if "error" in msg:
            for fd in fds:
                os.close(fd)
            raise BoxError(str(msg["error"]))
        return int(msg["pid"]), fds[0]

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


_client: ZygoteClient | None = None
_client_lock = threading.Lock()


def zygote() -> ZygoteClient:
    """This process's zygote, started on first use (and anew in a forked child)."""
    global _client
    with _client_lock:
        if _client is None or _client.owner != os.getpid() or not _client.alive:
            _client = ZygoteClient()
        return _client


def shutdown() -> None:
    global _client
    with _client_lock:
        if _client is not None and _client.owner == os.getpid():
            _client.close()
        _client = None
