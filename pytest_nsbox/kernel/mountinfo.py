"""The one reader of ``/proc/<pid>/mountinfo`` (proc_pid_mountinfo(5)).

A line is ``mount_id parent_id major:minor root mount_point mount_options [optional
fields...] - fstype source super_options``. The kernel escapes space, tab, newline and
backslash in paths and options as a backslash and three octal digits (``\\040``; fs/seq_file.c
``mangle_path``/``seq_escape``), so every path field is unescaped here, once, the same way.
Super options are split at commas before they are unescaped (an escaped comma stays in its
option). Lines this parser cannot read are skipped. Imports only the stdlib.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo field with its ``\\ooo`` escapes turned back into characters."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo, paths unescaped."""

    mount_id: int
    parent_id: int
    device: str
    """``major:minor`` of the filesystem (what ``os.stat(path).st_dev`` names)."""
    root: str
    point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    def option(self, name: str) -> str | None:
        """The value of super option ``name=value`` (e.g. overlay's ``lowerdir``), or None."""
        prefix = name + "="
        for opt in self.super_options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None


def parse(text: str) -> list[MountEntry]:
    """Every mount in a mountinfo text, in its order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(MountEntry(
                mount_id=int(fields[0]), parent_id=int(fields[1]), device=fields[2],
                root=unescape(fields[3]), point=unescape(fields[4]),
                options=tuple(fields[5].split(",")), fstype=fields[sep + 1],
                source=unescape(fields[sep + 2]),
                super_options=tuple(unescape(o) for o in fields[sep + 3].split(","))))
        except (ValueError, IndexError):
            continue
    return mounts


def read(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The mounts of a mountinfo file (default: this process's mount namespace).

    Undecodable bytes survive as surrogates (``os.fsencode`` gives them back). Raises
    ``OSError`` when the file cannot be read."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def of_pid(pid: int) -> list[MountEntry]:
    """The mounts of process ``pid``'s mount namespace. Raises ``OSError``."""
    return read(f"/proc/{pid}/mountinfo")
