"""Subnets for private networks, each used by one network on the machine at a time.

The pool 10.213.0.0/16 is carved into /24s. Taking one writes a lease, a JSON file in
``<run dir>/network/leases/``, while holding ``<run dir>/network/leases.lock`` (filelock),
so concurrent pytest processes and xdist workers never pick the same subnet. A lease names
its switch namespace and its owner's lock file (``Engine.owner_lock()``, flock'd by the
owning process for as long as it lives): a lease whose owner lock can be taken, or is gone,
belongs to a dead process. Such a stale lease is reclaimed (its switch namespace removed)
by the next allocation, or by ``collect_garbage``.

The addresses only ever exist on interfaces inside namespaces nsbox created, and no route
leads out of them, so a subnet the host also uses elsewhere would still not clash; the pool
is one private range so that leftovers are easy to recognise.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..kernel.fs import try_flock
from . import netns
from .errors import NetworkError

POOL = ipaddress.IPv4Network("10.213.0.0/16")
PREFIXLEN = 24
#: Longest wait for another process's allocation or release to finish.
LOCK_TIMEOUT = 30.0


@dataclass(frozen=True)
class Lease:
    """One subnet held by one network: its switch namespace and who owns it."""

    subnet: str
    netns: str
    owner_lock: str
    owner_pid: int
    group: str
    created: float
    path: str = field(default="", compare=False)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    def address(self, host: int) -> str:
        """The ``host``-th address of the subnet (1 is the bridge's)."""
        net = self.network
        if not 0 < host < net.num_addresses - 1:
            raise NetworkError(f"subnet {self.subnet} has no host number {host} "
                               f"(at most {net.num_addresses - 2} addresses)")
        return str(net.network_address + host)

    def describe(self) -> str:
        return (f"subnet {self.subnet} (namespace {self.netns}, owner pid {self.owner_pid}, "
                f"group {self.group})")


def owner_alive(lock_path: str) -> bool:
    """Whether the process holding ``lock_path`` lives: it holds an exclusive flock on it
    (a missing file was removed at its owner's clean exit)."""
    with try_flock(lock_path) as taken:
        return taken is False


class Leases:
    """The lease records of one run directory."""

    def __init__(self, run_dir: str, pool: ipaddress.IPv4Network = POOL,
                 prefixlen: int = PREFIXLEN) -> None:
        self.dir = os.path.join(run_dir, "network")
        self.records = os.path.join(self.dir, "leases")
        self.lock_path = os.path.join(self.dir, "leases.lock")
        self.pool = pool
        self.prefixlen = prefixlen

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import filelock

        os.makedirs(self.records, 0o700, exist_ok=True)
        lock = filelock.FileLock(self.lock_path, timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise NetworkError(f"the subnet lease lock {self.lock_path} stayed taken for "
                               f"{LOCK_TIMEOUT:g} s; is a process stuck holding it?") from None
        try:
            yield
        finally:
            lock.release()

    def _record_path(self, subnet: str) -> str:
        return os.path.join(self.records, subnet.replace("/", "_") + ".json")

    def _read(self) -> tuple[list[Lease], list[str]]:
        """Every lease record, and the paths of records that cannot be read."""
        leases, bad = [], []
        for entry in sorted(os.listdir(self.records)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.records, entry)
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                leases.append(Lease(**{k: data[k] for k in (
                    "subnet", "netns", "owner_lock", "owner_pid", "group", "created")},
                    path=path))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                bad.append(path)
        return leases, bad

    def _reclaim(self, lease: Lease) -> list[str]:
        """Remove a dead owner's switch namespace, then its lease."""
        done = []
        if netns.remove_named(lease.netns):
            done.append(f"network namespace {lease.netns}")
        os.unlink(lease.path)
        done.append(f"lease of {lease.describe()}")
        return done

    def acquire(self, *, netns_name: str, owner_lock: str, group: str) -> Lease:
        """Lease the first free subnet of the pool (reclaiming dead owners' ones first)."""
        with self._locked():
            leases, bad = self._read()
            taken = {os.path.basename(p) for p in bad}
            for lease in leases:
                if lease.owner_lock != owner_lock and not owner_alive(lease.owner_lock):
                    try:
                        self._reclaim(lease)
                        continue
                    except (NetworkError, OSError):
                        pass  # still in the way: leave that subnet alone
                taken.add(os.path.basename(lease.path))
            for subnet in self.pool.subnets(new_prefix=self.prefixlen):
                path = self._record_path(str(subnet))
                if os.path.basename(path) in taken:
                    continue
                lease = Lease(subnet=str(subnet), netns=netns_name, owner_lock=owner_lock,
                              owner_pid=os.getpid(), group=group, created=time.time(),
                              path=path)
                record = {k: v for k, v in asdict(lease).items() if k != "path"}
                with open(path + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(record, f)
                os.rename(path + ".tmp", path)
                return lease
        count = 2 ** (self.prefixlen - self.pool.prefixlen)
        raise NetworkError(f"all {count} subnets of {self.pool} are leased (one per private "
                           f"network alive on this machine, see {self.records}); close "
                           f"boxes or run `python -m pytest_nsbox gc`")

    def release(self, lease: Lease) -> None:
        with self._locked():
            try:
                os.unlink(lease.path)
            except FileNotFoundError:
                pass

    def collect(self, dry_run: bool = False) -> list[str]:
        """Reclaim every lease whose owner is dead: one line per namespace, lease or stray
        record removed (``removed ...``, or ``would remove ...`` in a dry run)."""
        if not os.path.isdir(self.records):
            return []
        lines: list[str] = []
        with self._locked():
            leases, bad = self._read()
            for lease in leases:
                if owner_alive(lease.owner_lock):
                    continue
                if dry_run:
                    if os.path.exists(netns.named_path(lease.netns)):
                        lines.append(f"would remove network namespace {lease.netns}")
                    lines.append(f"would remove lease of {lease.describe()}")
                else:
                    lines += [f"removed {what}" for what in self._reclaim(lease)]
            strays = [(p, "unreadable lease record") for p in bad]
            strays += [(os.path.join(self.records, e), "partial lease record")
                       for e in sorted(os.listdir(self.records)) if e.endswith(".tmp")]
            for path, what in strays:  # (writes hold the lock: a .tmp now was cut short)
                if not dry_run:
                    os.unlink(path)
                lines.append(f"{'would remove' if dry_run else 'removed'} {what} {path}")
        return lines

    def held(self) -> list[Lease]:
        """The current leases (for ``ps``-like listings and tests)."""
        if not os.path.isdir(self.records):
            return []
        with self._locked():
            return self._read()[0]
