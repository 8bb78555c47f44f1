"""``docker diff`` for an overlay read-write layer.

The upper directory holds exactly what the box changed: new and modified entries, whiteouts
(0:0 character devices) for deletions, and opaque directories (a directory that replaced
one of the image's). Like Docker, every directory of the image that holds a reported change
is itself reported ``C`` (except ``/``); the init layer's files are never reported.
"""
from __future__ import annotations

import os
import stat

from ..model.defaults import INIT_LAYER_FILES
from ..model.results import Change
from .view import is_opaque, is_whiteout, lookup

_INIT_LAYER_DIRS = frozenset(os.path.dirname(p) for p in INIT_LAYER_FILES)


def changes(upper: str, layers_bottom_first: tuple[str, ...] | list[str]) -> list[Change]:
    lower = list(reversed(layers_bottom_first))

    def in_image(path: str) -> bool:
        return lookup(lower, path.strip("/").split("/")) is not None
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
                if not parent_added and in_image(path):
                    found[path] = "D"
                    any_change = True
                continue
            if path in INIT_LAYER_FILES:
                continue
            added = parent_added or not in_image(path)
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
