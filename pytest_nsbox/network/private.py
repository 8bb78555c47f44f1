"""``network="private"``: one network per group of boxes (the plugin's group is the test).

One network, all of it outside the host's own namespace::

    switch namespace /run/netns/nsbox-net-<hex>      (leased subnet 10.213.N.0/24;
                                                      anonymous when rootless)
      bridge nsb-br0, 10.213.N.1
        nsb<box id>  ==veth==  eth0, 10.213.N.k, in box k's namespace (default route via .1)

The first box of a group leases a subnet and builds the switch; each box adds a veth pair
and its address, then every member's ``/etc/hosts`` is rewritten to list the group by name
(and hostname). The last box to leave removes the switch namespace (bridge and veths die
with it) and releases the lease. Namespaces route nothing (``ip_forward`` is 0 in a new
namespace) and no route leads out of a switch, so groups cannot reach each other, nor the
host, nor the outside.
"""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..errors import BoxClosed, TeardownError
from ..lifecycle import Undo
from ..model.spec import SHAPING_KEYS
from . import links, netns, shaping
from .errors import NetworkError
from .leases import Lease, Leases

if TYPE_CHECKING:
    from .handle import BoxHandle

LOCALHOST_LINES = ("127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback")
GATEWAY_HOST = 1
FIRST_BOX_HOST = 2

_lock = threading.RLock()
_networks: dict[tuple[str, object], Network] = {}


def hosts_text(entries: list[tuple[str, list[str]]]) -> str:
    """``/etc/hosts`` for a private network's boxes: localhost, then ``ip names...``."""
    lines = list(LOCALHOST_LINES)
    for ip, names in entries:
        unique = list(dict.fromkeys(n for n in names if n))
        lines.append(f"{ip}\t{' '.join(unique)}")
    return "\n".join(lines) + "\n"


@dataclass
class Member:
    box: BoxHandle
    ip: str
    veth: str
    #: What joining did, undone when the box leaves (``leave``).
    undo: Undo


class Network:
    """One group's switch namespace, bridge, lease and member boxes.

    Its own undo stack holds the switch namespace (with the lease, released only once the
    namespace is gone: a lease names what is left for ``gc``) and the fd to it; each
    member's holds its veth pair and its line in the others' ``/etc/hosts``.
    """

    def __init__(self, key: tuple[str, object], leases: Leases, lease: Lease,
                 ns_fd: int, undo: Undo, runner: netns.Runner) -> None:
        self.key = key
        self.runner = runner
        self.leases = leases
        self.lease = lease
        self.ns_fd = ns_fd
        self.undo = undo
        self.members: dict[str, Member] = {}
        self.next_host = FIRST_BOX_HOST
        self.destroyed = False

    @property
    def name(self) -> str:
        return self.lease.netns

    @property
    def gateway(self) -> str:
        return self.lease.address(GATEWAY_HOST)

    @classmethod
    def create(cls, box: BoxHandle) -> Network:
        """Lease a subnet and build the switch for ``box``'s group; on failure what was
        made is removed (the lease stays if its namespace could not be)."""
        name = f"nsbox-net-{secrets.token_hex(5)}"
        leases = Leases(box.run_dir)
        lease = leases.acquire(netns_name=name, owner_lock=box.owner_lock(),
                               group="(default)" if box.group is None else str(box.group))
        undo = Undo(f"private network {name}", closed_error=NetworkError)
        undo.callback(_remove_switch, name, leases, lease)
        runner = box.netns_runner
        try:
            fd = netns.create_switch(name, runner)
            undo.callback(os.close, fd)
            runner.run_in(fd, partial(links.setup_switch, lease.address(GATEWAY_HOST),
                                      lease.network.prefixlen),
                          f"setting up switch namespace {name}")
        except BaseException as exc:
            try:
                undo.close()
            except TeardownError as failed:  # the first error is the one to raise
                exc.add_note(str(failed))
            raise
        return cls((box.run_dir, box.group), leases, lease, fd, undo, runner)

    def join(self, box: BoxHandle) -> None:
        """Plug ``box`` in: veth, address, route, shaping; then every ``/etc/hosts``.
        ``leave(box)`` undoes it, also after a join that failed half-way."""
        # Plans first: a rate tbf cannot do fails before anything exists.
        try:
            box_plan = shaping.box_side(box.spec)
            switch_plan = shaping.switch_side(box.spec)
        except NetworkError as exc:
            raise NetworkError(f"box {box.name!r}: {exc}") from None
        # Addresses are not reused within a network: no box may hold a stale ARP entry.
        if self.next_host >= self.lease.network.num_addresses - 1:
            raise NetworkError(f"box {box.name!r}: private network {self.name} "
                               f"({self.lease.subnet}) has given out all its addresses "
                               f"({self.next_host - FIRST_BOX_HOST} boxes)")
        ip = self.lease.address(self.next_host)
        self.next_host += 1
        member = Member(box, ip, links.check_ifname(f"nsb{box.id[:12]}"),
                        Undo(f"box {box.name!r} on private network {self.name}",
                             closed_error=NetworkError))
        self.members[box.id] = member
        member.undo.callback(self._forget, member)
        # Before plugging: a half-made veth pair goes too (deleting none is no error).
        member.undo.callback(self._unplug, member)
        box_fd = netns.open_box_netns(box)
        try:
            self.runner.run_in(self.ns_fd, partial(links.add_port, member.veth,
                                                   netns.Fd(box_fd), switch_plan, box.name),
                               f"box {box.name!r}: plugging into switch {self.name}")
            self.runner.run_in(box_fd, partial(links.setup_box, ip,
                                               self.lease.network.prefixlen, self.gateway,
                                               box_plan, box.name),
                               f"box {box.name!r}: configuring {links.BOX_IFNAME}")
        finally:
            os.close(box_fd)
        box.set_ip(ip)
        self.write_hosts(joining=box)

    def write_hosts(self, joining: BoxHandle | None = None) -> None:
        """Every member's ``/etc/hosts`` lists the whole group (only the joining box's
        failure is an error: another box may have replaced its own file)."""
        text = hosts_text([(m.ip, [m.box.name, m.box.hostname])
                           for m in self.members.values()])
        for member in list(self.members.values()):
            try:
                member.box.write_text("/etc/hosts", text)
            except (BoxClosed, OSError) as exc:
                if member.box is joining:
                    raise NetworkError(f"box {member.box.name!r}: cannot write its "
                                       f"/etc/hosts: {exc}") from None

    def _unplug(self, member: Member) -> None:
        # The last box's veth goes with the switch namespace (and deleting a veth costs
        # ~30 ms of netlink), so only a box that leaves others behind unplugs.
        if any(m is not member for m in self.members.values()):
            self.runner.run_in(self.ns_fd, partial(links.remove_port, member.veth),
                               f"box {member.box.name!r}: unplugging {member.veth} from "
                               f"switch {self.name}")

    def _forget(self, member: Member) -> None:
        if self.members.pop(member.box.id, None) is not None and self.members:
            self.write_hosts()

    def leave(self, box: BoxHandle) -> None:
        """Unplug ``box`` (also after a join that failed half-way); the last one out
        removes the switch and releases the lease. ``TeardownError`` with every failure."""
        steps = Undo(f"box {box.name!r} leaving private network {self.name}",
                     closed_error=NetworkError)
        steps.callback(self._destroy_if_empty)
        member = self.members.get(box.id)
        if member is not None:
            steps.callback(member.undo.close)
        steps.close()

    def _destroy_if_empty(self) -> None:
        if not self.members and not self.destroyed:
            self.destroy()

    def destroy(self) -> None:
        """Remove the switch namespace (bridge and veths die with it), then the lease."""
        self.destroyed = True
        _networks.pop(self.key, None)
        try:
            self.undo.close()
        finally:
            self.ns_fd = -1


def _remove_switch(name: str, leases: Leases, lease: Lease) -> None:
    netns.remove_named(name)  # if this fails the lease stays: it names what is left
    leases.release(lease)


def attach(box: BoxHandle) -> None:
    """Give a just-started box its network (``Box._attach_network``); its undo goes on
    the box's undo stack (``box.on_close``)."""
    spec = box.spec
    if spec.network == "host":
        return
    if spec.network != "private":
        shaped = [k for k in SHAPING_KEYS if getattr(spec, k) is not None]
        if shaped:
            verb = "shapes" if len(shaped) == 1 else "shape"
            raise NetworkError(
                f"box {box.name!r}: {', '.join(shaped)} {verb} the link of a private "
                f"network, and network={spec.network!r} has none; use network='private'")
        return
    with _lock:
        key = (box.run_dir, box.group)
        net = _networks.get(key)
        if net is None:
            net = Network.create(box)
            _networks[key] = net
        # Registered before joining: leave() undoes a half-done join too.
        box.on_close(partial(_leave, net, box))
        net.join(box)


def _leave(net: Network, box: BoxHandle) -> None:
    with _lock:
        net.leave(box)


def active() -> list[tuple[str, str, object, list[str]]]:
    """This process's live networks: (switch namespace, subnet, group, member names)."""
    with _lock:
        return [(n.name, n.lease.subnet, n.key[1], [m.box.name for m in n.members.values()])
                for n in _networks.values()]
