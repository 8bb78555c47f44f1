"""Messages between the pytest process, the zygote and a box's init.

One JSON object per SOCK_SEQPACKET message, file descriptors riding along as SCM_RIGHTS.
Seqpacket keeps message boundaries, so concurrent senders never interleave. Imported by the
box's init before pivot_root: stdlib only.
"""
from __future__ import annotations

import array
import json
import os
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 8


def socketpair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; ``(None, [])`` at EOF (the peer is gone)."""
    fds = array.array("i")
    # CLOEXEC on arrival: a received fd must never leak into a command the box execs.
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(MAX_FDS * fds.itemsize),
                                                socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(cdata) - (len(cdata) % fds.itemsize)
            fds.frombytes(cdata[:usable])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)
