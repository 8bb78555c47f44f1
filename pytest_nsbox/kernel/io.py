"""Waiting on file descriptors. Imports only the stdlib (the box's init uses it)."""
from __future__ import annotations

import math
import os
import select
from collections.abc import Iterable


def readable(fds: Iterable[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` with something to read (or at EOF/error) within ``timeout`` seconds;
    ``None`` waits as long as it takes.

    What ``select.select(fds, [], [], timeout)[0]`` says, through poll(2): ``select()``
    fails with "filedescriptor out of range" once a descriptor number reaches FD_SETSIZE
    (1024), which a long session or a raised RLIMIT_NOFILE reaches.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _events in poller.poll(ms)]


def read_all(fd: int) -> bytes:
    """Everything ``fd`` gives until EOF (a pipe, a cgroupfs file that needs more than one
    read)."""
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
