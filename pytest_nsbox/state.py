"""Where pytest-nsbox keeps things on the host (deleting them: ``kernel.fs.remove_tree``).

Two roots: the *store* (persistent layers and images, default ``/var/lib/nsbox``) and the
*run* directory (boxes' read-write and init layers, on tmpfs when the host has one:
``/dev/shm/nsbox``). Both carry ``nsbox`` in their names so leftovers are easy to find.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .kernel import mountinfo

DEFAULT_STORE = "/var/lib/nsbox"


def _tmpfs(path: str) -> bool:
    try:
        return any(m.point == path and m.fstype == "tmpfs" for m in mountinfo.read())
    except OSError:
        return False


def default_run_dir() -> str:
    """Upper layers on tmpfs: mounting and deleting them costs a third of ext4's."""
    return "/dev/shm/nsbox" if _tmpfs("/dev/shm") else "/run/nsbox"


@dataclass(frozen=True)
class StateDirs:
    store: str
    run: str

    @classmethod
    def default(cls, store: str | None = None, run: str | None = None) -> StateDirs:
        return cls(store=os.path.abspath(store or os.environ.get("NSBOX_STORE") or DEFAULT_STORE),
                   run=os.path.abspath(run or os.environ.get("NSBOX_RUN") or default_run_dir()))

    @property
    def locks(self) -> str:
        return os.path.join(self.store, "locks")

    @property
    def boxes(self) -> str:
        return os.path.join(self.run, "boxes")

    @property
    def kept(self) -> str:
        return os.path.join(self.run, "kept")
