"""Layers as overlayfs merges them, read from their directories without mounting them.

A layer directory is in overlay form (overlayfs.rst, "whiteouts and opaque directories"): a
deletion is a 0:0 character device (``is_whiteout``), a directory hiding everything below
it carries ``trusted.overlay.opaque=y`` (``is_opaque``; ``user.overlay.opaque`` for
userxattr mounts). ``lookup`` finds what one path shows through a stack of layers, and
``MergedView`` what the image shows: paths resolved through its symlinks inside its root,
and directories listed merged. The Containerfile build reads the image so far through it
(``COPY``, ``WORKDIR``, ``--chown`` names), and ``diff.py`` asks what the image had.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import ImageError

#: How many symlinks one path may go through (Linux's ``MAXSYMLINKS``, namei.c).
MAX_SYMLINK_HOPS = 40
#: The attribute an opaque directory carries (``user.`` on a userxattr mount;
#: ``user.fuseoverlayfs.`` in an upper directory of fuse-overlayfs, a rootless fallback).
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")


def is_whiteout(st: os.stat_result) -> bool:
    """A whiteout: a character device numbered 0:0 (a deletion of what is below)."""
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


def lookup(layers_top_first: list[str], parts: list[str]) -> tuple[str, os.stat_result] | None:
    """The entry at symlink-free ``parts`` as overlayfs merges the layers, or None.

    The topmost layer holding the path wins; a whiteout, a non-directory on the way, or an
    opaque directory on the way hides everything deeper.
    """
    if not parts:
        top = layers_top_first[0] if layers_top_first else "/"
        return top, os.lstat(top)
    for layer in layers_top_first:
        path = layer
        opaque_above = False
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                break
            if is_whiteout(st):
                return None
            if i == len(parts) - 1:
                return path, st
            if not stat.S_ISDIR(st.st_mode):
                return None  # a non-directory here shadows every deeper layer
            if is_opaque(path):
                opaque_above = True
        if opaque_above:
            return None  # an opaque directory on the way: nothing deeper shows through
    return None


@dataclass(frozen=True)
class Found:
    """An entry of a merged view."""

    path: str             # the host path of the entry, in the topmost layer that has it
    st: os.stat_result
    parts: tuple[str, ...]  # its path in the image, symlinks resolved


class MergedView:
    """Looks paths up in an image the way overlayfs would merge its layers (read-only)."""

    def __init__(self, layer_dirs_bottom_first: list[str] | tuple[str, ...]) -> None:
        self.layers = list(reversed(layer_dirs_bottom_first))

    def resolve(self, path: str, follow_last: bool = True, root: tuple[str, ...] = ()
                ) -> tuple[tuple[str, ...], Found | None]:
        """``path`` in the image with symlinks resolved inside the image's root.

        As Docker's ``FollowSymlinkInScope`` and containerd's ``fs.RootPath``: an absolute
        link target starts again at the root, ``..`` never climbs above it, and a missing
        component is kept as named while later ones still resolve (``gone/../link`` follows
        ``link``). ``root`` (components of a directory of the image) makes that directory
        the root instead, as for an archive that ``chrootarchive.Untar`` extracts there;
        ``path`` is then relative to it.

        Returns the resolved components (from the image's root) and the entry found there
        (None if missing; the components then name where it would be created).
        """
        todo = [p for p in path.split("/") if p not in ("", ".")]
        cur: list[str] = list(root)
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(cur) > len(root):
                    cur.pop()
                continue
            cand = [*cur, part]
            hit = lookup(self.layers, cand)
            if hit is not None and stat.S_ISLNK(hit[1].st_mode) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(f"{path}: too many levels of symbolic links (a loop?)")
                target = os.readlink(hit[0])
                if target.startswith("/"):
                    cur = list(root)
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            cur = cand
        hit = lookup(self.layers, cur)
        return tuple(cur), (Found(hit[0], hit[1], tuple(cur)) if hit is not None else None)

    def listdir(self, parts: tuple[str, ...]) -> dict[str, Found]:
        """The entries of the directory at symlink-free ``parts``, merged as overlayfs
        merges a directory: the topmost layer's entry of a name wins, a whiteout hides the
        name below it, and an opaque directory (or a non-directory) hides the layers
        below. Empty when ``parts`` is not a directory."""
        out: dict[str, Found] = {}
        hidden: set[str] = set()
        for layer in self.layers:
            path, last = layer, False
            for part in parts:
                path = os.path.join(path, part)
                try:
                    st = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    path = ""
                    break
                if is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                    return out  # hidden here: nothing deeper shows through
                last = last or is_opaque(path)
            if path:
                with os.scandir(path) as it:
                    for entry in it:
                        if entry.name in out or entry.name in hidden:
                            continue
                        st = entry.stat(follow_symlinks=False)
                        if is_whiteout(st):
                            hidden.add(entry.name)
                        else:
                            out[entry.name] = Found(entry.path, st, (*parts, entry.name))
            if last:
                break
        return out

    def read_bytes(self, path: str) -> bytes | None:
        _parts, found = self.resolve(path)
        if found is None or not stat.S_ISREG(found.st.st_mode):
            return None
        with open(found.path, "rb") as f:
            return f.read()
