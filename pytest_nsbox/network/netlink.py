"""Netlink errors as this package reports them, and the one way to open a netlink socket.

``links`` (interfaces, addresses, routes) and ``shaping`` (qdiscs) both send requests over
pyroute2's ``IPRoute``; a failed one becomes a ``NetworkError`` naming what was being done,
the errno and the kernel's extended ack. pyroute2 is imported on first use (it takes 0.2 s
to load).
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import NetworkError


def rtnl() -> Any:
    """A new ``IPRoute`` (pyroute2) in this thread's network namespace, with extended acks
    (the kernel's own reason in errors)."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    return IPRoute(ext_ack=True)


def failure(what: str, exc: Any) -> NetworkError:
    """``<what> failed: netlink error 17 (File exists: <the kernel's extended ack>)``."""
    code = getattr(exc, "code", 0) or 0
    reason = os.strerror(code)
    detail = exc.args[1] if len(getattr(exc, "args", ())) > 1 else ""
    if detail and detail != reason:
        reason = f"{reason}: {detail}"
    return NetworkError(f"{what} failed: netlink error {code} ({reason})")


def netlink_error() -> type[Exception]:
    """pyroute2's ``NetlinkError`` (imported on first use: pyroute2 takes 0.2 s to load)."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    return NetlinkError  # type: ignore[no-any-return]


@contextmanager
def step(what: str, kind: str | None = None) -> Iterator[None]:
    """Turn a netlink error into a ``NetworkError`` saying ``what`` failed; when adding an
    interface of ``kind`` the kernel does not know, say which module is missing."""
    try:
        yield
    except netlink_error() as exc:
        error = failure(what, exc)
        if kind is not None and getattr(exc, "code", None) == errno.EOPNOTSUPP:
            error = NetworkError(f"{error}: this kernel has no {kind} interfaces (module "
                                 f"{kind}, CONFIG_{'VETH' if kind == 'veth' else 'BRIDGE'}); "
                                 f"load it with `modprobe {kind}`")
        raise error from None
