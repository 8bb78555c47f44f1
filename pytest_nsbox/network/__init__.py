"""Networks of boxes: private networks, traffic shaping, and reaching a box from the test.

- ``private``: ``network="private"``, a switch namespace per group with a bridge and one
  veth pair per box, addresses from leased subnets (``leases``), names in ``/etc/hosts``.
- ``links``: the netlink requests of a private network (bridge, veth pairs, addresses).
- ``shaping``: ``rate`` (tbf, both directions), ``latency``/``jitter``/``loss`` (netem).
- ``netlink``: opening pyroute2's ``IPRoute`` and its errors as ``NetworkError``.
- ``reach``: ``Box.connect``, ``Box.wait_for_port``, ``Box.forward``.
- ``sweep``: ``collect_garbage(dirs)`` for what crashed runs left behind.
- ``netns``, ``handle``: running in a box's namespaces, the box as the network sees it.

Inside the package imports point down too (pyproject's ``network`` layers contract):
``private``; ``links``, ``reach``, ``sweep``; ``shaping``, ``leases``; ``netlink``,
``netns``; ``handle``, ``errors``.

pyroute2 (netlink) is imported only when a private network is built.
"""
from __future__ import annotations

from .errors import NetworkError, PortRefused, PortTimeout
from .sweep import collect_garbage
from .private import active, attach

__all__ = ["NetworkError", "PortRefused", "PortTimeout", "active", "attach",
           "collect_garbage"]
