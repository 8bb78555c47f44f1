"""``docker diff`` for an overlay read-write layer.

The upper directory holds exactly what the box changed: new and modified entries, whiteouts
(0:0 character devices) for deletions, and opaque directories (a directory that replaced
one of the image's). Like Docker, every directory of the image that holds a reported change
is itself reported ``C`` (except ``/``); the init layer's files are never reported.
"""
from __future__ import annotations

import os
import stat

from ..runtime.result import Change
from .plan import INIT_LAYER_FILES

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str | int) -> bool:
    """An overlay opaque directory (by path, never following a link, or by open fd)."""
    for name in OPAQUE_XATTRS:
        try:
            value = (os.getxattr(path, name) if isinstance(path, int)
                     else os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue
        if value == b"y":
            return True
    return False


class _Lower:
    """Existence of a path in the image: the lower layers merged, top first."""

    def __init__(self, layers_bottom_first: tuple[str, ...] | list[str]) -> None:
        self.layers = list(reversed(layers_bottom_first))

    def exists(self, rel: str) -> bool:
        parts = rel.strip("/").split("/")
        for layer in self.layers:
            found = self._in_layer(layer, parts)
            if found is not None:
                return found
        return False

    @classmethod
    def _in_layer(cls, layer: str, parts: list[str]) -> bool | None:
        """True/False when this layer decides; None to look further down."""
        path = layer
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if is_whiteout(st):
                return False
            if i == len(parts) - 1:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False
            if is_opaque(path):
                # Nothing below this directory shows through from deeper layers.
                return cls._in_layer(path, parts[i + 1:]) or False
        return None


_INIT_LAYER_DIRS = frozenset(os.path.dirname(p) for p in INIT_LAYER_FILES)


def changes(upper: str, layers_bottom_first: tuple[str, ...] | list[str]) -> list[Change]:
    lower = _Lower(layers_bottom_first)
    found: dict[str, str] = {}

    def walk(dirpath: str, rel: str, parent_added: bool) -> bool:
        """Record changes below ``rel``; True when any was recorded."""
        any_change = False
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(st):
                if not parent_added and lower.exists(path):
                    found[path] = "D"
                    any_change = True
                continue
            if path in INIT_LAYER_FILES:
                continue
            added = parent_added or not lower.exists(path)
            if stat.S_ISDIR(st.st_mode):
                opaque = is_opaque(entry.path)
                below = walk(entry.path, path, added)
                if added and not (path in _INIT_LAYER_DIRS and not below):
                    # (a directory copied up only for the init layer's files is no change)
                    found[path] = "A"
                    any_change = True
                elif below or opaque:
                    found[path] = "C"
                    any_change = True
            else:
                found[path] = "A" if added else "C"
                any_change = True
        return any_change

    walk(upper, "", False)
    return [Change(path=p, kind=k) for p, k in sorted(found.items())]
