"""The network's errors: ``BoxError`` subclasses, so callers that catch ``BoxError`` (or
``NsboxError``) catch them too; the port errors are also the ``OSError`` a socket user
expects (``TimeoutError``, ``ConnectionRefusedError``)."""
from __future__ import annotations

from ..errors import BoxError


class NetworkError(BoxError):
    """A private network, an interface, a qdisc or a lease could not be set up or removed."""


class PortTimeout(NetworkError, TimeoutError):
    """``wait_for_port``/``connect(timeout=...)``: nothing listened on the port in time."""


class PortRefused(NetworkError, ConnectionRefusedError):
    """``connect()`` without a timeout: nothing listens on the port in the box."""
