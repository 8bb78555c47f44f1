"""The netlink requests of a private network, through pyroute2 (never the ``ip`` program).

Each function runs inside one namespace (``netns.run_in`` puts it there) and opens its own
``IPRoute`` there: the switch namespace (bridge, the switch-side veth ends) or a box's
(``eth0``, its address, route and qdiscs). A failed request becomes a ``NetworkError``
naming what was being done and the netlink errno.
"""
from __future__ import annotations

import errno
from typing import Any

from . import shaping
from .errors import NetworkError
from .netlink import failure, netlink_error, rtnl, step

#: The bridge in every switch namespace (one per namespace, so one name does).
BRIDGE = "nsb-br0"
#: The box's end of its veth pair.
BOX_IFNAME = "eth0"
IFNAMSIZ = 16  # <linux/if.h>: 15 bytes and a NUL


def check_ifname(name: str) -> str:
    # net/core/dev.c dev_valid_name(): no '/', ':' or whitespace, not "." or "..".
    if (not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..")
            or any(c in "/:" or c.isspace() for c in name)):
        raise NetworkError(f"interface name {name!r} is not 1 to {IFNAMSIZ - 1} bytes "
                           f"without '/', ':' or spaces")
    return name


def _index(ipr: Any, name: str, where: str) -> int:
    with step(f"looking up {name} in {where}"):
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkError(f"{name} is missing in {where}")
    return int(found[0])


def setup_switch(address: str, prefixlen: int) -> None:
    """In a new switch namespace: the bridge, up, with the network's gateway address."""
    with rtnl() as ipr:
        with step(f"adding bridge {BRIDGE}", kind="bridge"):
            ipr.link("add", ifname=BRIDGE, kind="bridge")
        index = _index(ipr, BRIDGE, "the switch namespace")
        with step(f"adding address {address}/{prefixlen} to {BRIDGE}"):
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        with step(f"bringing up {BRIDGE}"):
            ipr.link("set", index=index, state="up")


def add_port(veth: str, box_netns: int, plan: list[shaping.Qdisc], box: str) -> None:
    """In the switch namespace: a veth pair whose peer is ``eth0`` in the box's namespace
    (created there directly), this end on the bridge, up, shaped by ``plan``."""
    check_ifname(veth)
    with rtnl() as ipr:
        with step(f"adding veth pair {veth} (switch) / {BOX_IFNAME} (box {box!r})",
                  kind="veth"):
            ipr.link("add", ifname=veth, kind="veth",
                     peer={"ifname": BOX_IFNAME, "net_ns_fd": box_netns})
        index = _index(ipr, veth, "the switch namespace")
        bridge = _index(ipr, BRIDGE, "the switch namespace")
        shaping.apply(ipr, index, plan, f"box {box!r}: shaping what it receives ({veth})")
        with step(f"attaching {veth} to {BRIDGE}"):
            ipr.link("set", index=index, master=bridge, state="up")


def remove_port(veth: str) -> bool:
    """In the switch namespace: delete the veth pair (its box end goes with it)."""
    with rtnl() as ipr:
        found = ipr.link_lookup(ifname=veth)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except netlink_error() as exc:
            if getattr(exc, "code", None) == errno.ENODEV:
                return False
            raise failure(f"deleting veth {veth}", exc) from None
    return True


def setup_box(address: str, prefixlen: int, gateway: str, plan: list[shaping.Qdisc],
              box: str) -> None:
    """In the box's namespace: ``eth0`` shaped, addressed, up, and the default route."""
    with rtnl() as ipr:
        index = _index(ipr, BOX_IFNAME, f"box {box!r}")
        shaping.apply(ipr, index, plan, f"box {box!r}: shaping what it sends ({BOX_IFNAME})")
        with step(f"box {box!r}: adding address {address}/{prefixlen} to {BOX_IFNAME}"):
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        with step(f"box {box!r}: bringing up {BOX_IFNAME}"):
            ipr.link("set", index=index, state="up")
        with step(f"box {box!r}: adding the default route via {gateway}"):
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
