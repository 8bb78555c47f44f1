"""What a crashed pytest process left of its private networks, and removing it."""
from __future__ import annotations

from ..state import StateDirs
from .leases import Leases


def collect_garbage(dirs: StateDirs, dry_run: bool = False) -> list[str]:
    """Remove the switch namespaces and subnet leases of dead owners.

    Returns one line per thing removed (``removed network namespace nsbox-net-...``,
    ``removed lease of subnet ...``), or that would be with ``dry_run``. A lease's owner is
    dead when its owner lock (``Engine.owner_lock()``) can be taken or is gone. Namespaces
    named ``nsbox-*`` without a lease in ``dirs`` are left alone: they may belong to a
    pytest that uses another run directory.
    """
    return Leases(dirs.run).collect(dry_run=dry_run)
