"""Who a box's command runs as: runc's user lookup over the box's /etc/passwd and /etc/group.

The rules are those of ``GetExecUser`` and ``GetExecUserPath`` in moby/sys ``user/user.go``
(formerly opencontainers/runc ``libcontainer/user``), which Docker and containerd resolve
``--user``/``USER`` with, and of runc's ``prepareEnv`` (``libcontainer/env.go``) for ``HOME``:

- ``""``: uid 0 as the box's init is; its passwd entry (the first with uid 0), when there is one,
  gives the gid and, through ``/etc/group``, the supplementary groups.
- ``"name"``, or ``"uid"`` with a passwd entry (the first with that uid): the entry's uid and
  gid, plus every group of ``/etc/group`` whose member list names the entry's user.
- ``"uid"`` with no entry: that uid, gid 0, no supplementary groups.
- ``"user:group"`` (names or numbers): the user as above with only that gid, and no
  supplementary groups; a numeric gid needs no ``/etc/group`` entry, a name does.
- Numbers are numbers even when a name looks like one (``"111"`` is uid 111, never a user
  called ``111``), and must lie in 0..2**31-1.
- ``HOME``: kept when the environment sets it to something non-empty; else the home of the
  first passwd entry with the command's uid; else ``/``.

Docker's daemon (moby ``getUser``) also adds the gid itself to the supplementary list it
hands runc; ``id -u``, ``id -g`` and ``id -G`` read the same either way. We keep
``GetExecUser``'s list as it is.

Pure functions over the files' text, plus ``read_file``. It runs inside the box's init, so it
imports nothing from pytest and nothing outside the standard library.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["EXAMPLE", "MAX_ID", "ExecUser", "Group", "Passwd", "UserError", "check", "exec_user",
           "home_of", "parse_group", "parse_passwd", "read_file", "with_home"]

#: Good ``user`` values, as Python source, for error messages.
EXAMPLE = "'nobody', '1000' or '1000:1000'"
#: Largest uid or gid accepted (moby/sys user: ``maxID``, for 32-bit systems' sake).
MAX_ID = (1 << 31) - 1
#: What ``read_file`` reads at most (moby/sys user: ``maxUserFileBytes``).
MAX_FILE_BYTES = 10 << 20

# Go's strconv.Atoi: an optional sign, then ASCII decimal digits.
_ATOI = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
_RANGE = f"uids and gids must be in range 0-{MAX_ID}"


class UserError(LookupError):
    """A user or group that the box's files do not have, or a uid/gid out of range.

    ``str()`` is one line, e.g. ``unable to find user ghost: no matching entries in the
    box's /etc/passwd``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "user lookup failed"


@dataclass(frozen=True)
class Passwd:
    """One line of ``/etc/passwd`` (``name:password:uid:gid:gecos:home:shell``)."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Group:
    """One line of ``/etc/group`` (``name:password:gid:member,member``)."""

    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ExecUser:
    """What a command gets: ``setgroups(groups)``, ``setgid(gid)``, ``setuid(uid)``.

    ``home`` is what ``GetExecUser`` found in passwd (``""`` when nothing matched); the
    command's ``HOME`` comes from ``with_home``, which is runc's rule.
    """

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = ""


def _field_int(text: str) -> int:
    """A number field as runc's ``parseLine`` reads it: Atoi, with errors giving 0 and
    out-of-range values clamped to int64 (what Atoi returns alongside its range error)."""
    if not _ATOI.fullmatch(text):
        return 0
    return max(_INT64_MIN, min(_INT64_MAX, int(text)))


def _rows(text: str, fields: int, comments: bool = False) -> Iterator[list[str]]:
    """bufio.ScanLines, then bytes.TrimSpace: lines split at ``\\n``, blank ones (and with
    ``comments``, ``#`` ones) dropped, each split at ``:`` and padded to ``fields``."""
    for line in text.split("\n"):
        line = line.strip()
        if not line or (comments and line[0] == "#"):
            continue
        row = line.split(":")
        if len(row) < fields:
            row += [""] * (fields - len(row))
        yield row


def parse_passwd(text: str) -> list[Passwd]:
    """The entries of a passwd file, in file order. Missing fields are empty (or 0 for
    numbers), non-numeric ids are 0, blank lines are skipped; nothing is an error
    (moby/sys user ``ParsePasswdFilter``)."""
    return [Passwd(name=r[0], uid=_field_int(r[2]), gid=_field_int(r[3]), home=r[5])
            for r in _rows(text, 7)]


def parse_group(text: str) -> list[Group]:
    """The entries of a group file, in file order; blank lines and lines starting with
    ``#`` are skipped (moby/sys user ``ParseGroupFilter``, which follows glibc here)."""
    return [Group(name=r[0], gid=_field_int(r[2]),
                  members=tuple(r[3].split(",")) if r[3] else ())
            for r in _rows(text, 4, comments=True)]


@dataclass(frozen=True)
class _Arg:
    """One side of ``user:group``: a name, or a number (``numeric``) in 0..MAX_ID."""

    text: str
    number: int
    numeric: bool


def _arg(text: str, spec: str) -> _Arg | None:
    """moby/sys user ``parseNumeric``: what Atoi reads is a number and must be in range;
    anything else is a name. ``""`` is "not given"."""
    if text == "":
        return None
    if not _ATOI.fullmatch(text):
        return _Arg(text, 0, False)
    number = int(text)
    if not 0 <= number <= MAX_ID:
        raise UserError(f"user {spec!r}: {_RANGE}")
    return _Arg(text, number, True)


def _split(spec: str) -> tuple[_Arg | None, _Arg | None]:
    user, _, group = spec.partition(":")
    return _arg(user, spec), _arg(group, spec)


def exec_user(spec: str, passwd: str | None, group: str | None,
              default: ExecUser = ExecUser(0, 0)) -> ExecUser:
    """The ids ``spec`` (``""``, ``user``, ``uid``, ``user:group``, ``uid:gid``, ...) runs as.

    ``passwd`` and ``group`` are the files' text, ``None`` when the box has no such file
    (then only numbers resolve). ``default`` is what an empty part keeps (runc's
    ``defaults``; Docker passes none: uid 0, gid 0, no groups). Raises ``UserError``
    naming the user or group that is not in the box's files, or the id out of range.
    Source: moby/sys ``user.GetExecUser``.
    """
    user_arg, group_arg = _split(spec)
    uid, gid, groups, home = default.uid, default.gid, default.groups, default.home
    found = None  # the first match wins, even when there are more
    for row in _rows(passwd, 7) if passwd is not None else ():
        if (row[0] == user_arg.text if user_arg is not None and not user_arg.numeric
                else _field_int(row[2]) == (uid if user_arg is None else user_arg.number)):
            found = row
            break
    matched_name = ""
    if found is not None:
        matched_name = found[0]
        uid, gid, home = _field_int(found[2]), _field_int(found[3]), found[5]
    elif user_arg is not None:
        if not user_arg.numeric:
            raise _not_found("user", user_arg.text, "/etc/passwd", passwd)
        uid = user_arg.number
    if group_arg is None and matched_name:
        member_of = tuple(_field_int(row[2]) for row in _rows(group or "", 4, comments=True)
                          if matched_name in row[3].split(","))
        groups = member_of or groups
    elif group_arg is not None:
        for row in _rows(group, 4, comments=True) if group is not None else ():
            if (_field_int(row[2]) == group_arg.number if group_arg.numeric
                    else row[0] == group_arg.text):
                gid = _field_int(row[2])
                break
        else:
            if not group_arg.numeric:
                raise _not_found("group", group_arg.text, "/etc/group", group)
            gid = group_arg.number
    return ExecUser(uid=uid, gid=gid, groups=groups, home=home)


def _not_found(what: str, name: str, path: str, text: str | None) -> UserError:
    """runc's ErrNoPasswdEntries/ErrNoGroupEntries, naming the box's file."""
    where = f"the box's {path}" if text is not None else f"the box (it has no {path})"
    return UserError(f"unable to find {what} {name}: no matching entries in {where}")


def home_of(uid: int, passwd: str | None) -> str:
    """The home of the first passwd entry with ``uid``, else ``/`` (runc ``getUserHome``)."""
    for row in _rows(passwd, 7) if passwd is not None else ():
        if _field_int(row[2]) == uid:
            return row[5]
    return "/"


def with_home(env: Mapping[str, str], uid: int, passwd: str | None) -> dict[str, str]:
    """``env`` with ``HOME`` from passwd unless it sets a non-empty one (runc ``prepareEnv``)."""
    out = dict(env)
    if not out.get("HOME"):
        out["HOME"] = home_of(uid, passwd)
    return out


def read_file(path: str) -> str | None:
    """A user database's text, as ``GetExecUserPath`` opens it: ``None`` when it cannot be
    opened or is not a regular file (a FIFO never blocks the caller); ``UserError`` when it
    holds more than ``MAX_FILE_BYTES``. Decoded so that any byte survives (surrogateescape)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 16, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise UserError(f"the box's {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def check(value: object) -> str | None:
    """A ``user`` value as the marker, ``Box`` and ``run`` take it, normalized to text.

    ``None`` and ``""`` are "not set" (the image's ``USER``, else root). An int is a uid.
    A string is ``user``, ``uid``, ``user:group`` or ``uid:gid``. Raises ``ValueError`` for
    anything that can never resolve: another type, a NUL or newline, more than one ``:``
    (a group name cannot hold one), or a number outside 0..2**31-1.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not a user name or uid but a {type(value).__name__}")
    text = str(value)
    if text == "":
        return None
    if "\0" in text or "\n" in text:
        raise ValueError("a user name cannot hold NUL or a newline")
    if text.count(":") > 1:
        raise ValueError("more than one ':' (give 'user:group')")
    try:
        _split(text)
    except UserError:
        raise ValueError(_RANGE) from None
    return text
