"""COPY and ADD as Docker's builder (BuildKit) does them: what they read, and the layer they write.

API (what ``builder.py`` calls)::

    from . import copy as cp

    source = cp.Source.context(folder, "Containerfile")  # the build context (.dockerignore read)
    source = cp.Source.image(image, "stage 'build'")      # COPY --from=<stage or image>
    plan = cp.plan("COPY", source, ["src", "*.txt"], "/dest/",
                   lower=current_image.layer_dirs,   # the image so far, bottom first
                   workdir="/app",                   # starts a relative destination
                   chown="app:app", chmod="755",     # --chown / --chmod (or None)
                   exclude=["*.pyc"], parents=False, link=False,   # --exclude/--parents/--link
                   unpack=None, checksum=None,       # ADD --unpack / --checksum
                   contents=[("EOF", "text\\n")],    # heredoc sources: (name, data)
                   where="Containerfile:7")          # file:line, for messages
    key = hash_of(chain, "COPY", plan.key)          # the step's cache key (hex sha256)
    plan.apply(layer_dir)                           # writes the new layer (an empty directory)

    cp.make_dirs(lower=..., layer=layer_dir, path="/app", owner=(uid, gid))  # WORKDIR

``plan`` checks all it can before a layer is made (sources exist, URLs, ``--chown`` names,
``--chmod``, the trailing-slash rule) and raises ``ImageError`` as ``file:line: COPY src:
problem``. ``plan.key`` covers everything the step reads: each source's name, kind, mode,
content, link targets, xattrs and child names (owners too for ``--from``, which keeps
them), and the destination and options; not mtimes, which Docker's cache ignores too.
``apply`` raises ``ImageError`` for conflicts met while writing (a folder onto a file, a
file onto a folder, a device node).

The rules, from the Dockerfile reference (sections COPY, ADD) and BuildKit's code
(``frontend/dockerfile/dockerfile2llb/convert_copy.go`` ``dispatchCopy``,
``solver/llbsolver/file/backend.go`` ``docopy``, ``unpack.go``; tonistiigi/fsutil
``copy/copy.go``; moby/go-archive ``archive.go`` ``Unpack``; moby/patternmatcher):

- Sources are relative to the source root; a leading ``/`` and ``..`` never leave it
  (``../x`` is ``x``). A source that is a symlink is followed inside the root (an absolute
  target starts at the root, ``..`` stops there) and copied under the source's own name;
  symlinks inside a copied folder stay symlinks. Context files arrive owned by 0:0
  (BuildKit resets the context's owners); ``--from`` keeps the owners it finds. The
  context's ``<Containerfile>.dockerignore``, ``.containerignore`` or ``.dockerignore``
  hides what it names, as if it were not in the context.
- Wildcards (``*``, ``?``, ``[...]``, ``\\`` escapes) match as Go's ``filepath.Match``, dot
  files included; one that matches nothing adds nothing (BuildKit's
  ``AllowEmptyWildcard``). Several sources, one of them a file, need a destination
  ending in ``/`` or a folder already there (the reference's rule; BuildKit would write
  each file over the last); several folders merge into the destination, as in BuildKit.
- A folder source copies its contents, merged into what is there; nested folders take the
  source's owner, mode and times. A file source onto a folder (or a destination ending in
  ``/``) goes inside it under its own name; otherwise the destination is its new name.
  Missing destination folders are made (0755, or the ``--chmod`` number; owner 0:0 or
  ``--chown``). Files keep their mode and mtimes unless ``--chmod`` (octal, or symbolic as
  chmod(1): ``u+x``, ``go=rX``) or ``--chown``. ``--exclude`` patterns (and ``--parents``'
  include patterns) apply to paths inside each copied folder, as in fsutil.
- The destination is resolved inside the image's root through the layers so far: a
  symlink on the way is followed there (``/bin -> usr/bin`` puts files in ``/usr/bin``
  and ``/bin`` stays a link). A folder of the source that meets a symlink of the image is
  followed the same way (issue 9; BuildKit stops there with "cannot copy to
  non-directory", moby/moby#47367, and the classic builder replaced the link,
  moby/moby#42148). A file replaces a file or symlink; a file onto a folder, or a folder
  onto a file, is an error. ``link=True`` resolves against an empty image, as ``--link``.
- ADD: URLs and git sources are refused: builds have no network. A local file that is a
  tar (plain, gzip, bzip2 or xz; told by its content, never its name) is extracted into
  the destination folder as ``archive.Untar`` does: an entry replaces what is there (a
  folder merges with a folder), parents resolve inside the destination as if it were the
  root, implied folders are 0755 root, owners come from the archive unless ``--chown``;
  ``..`` names, device nodes and ``.wh.*`` names (a layer's deletion marks) are refused
  with the entry named. ``unpack=False`` copies it as a file.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import ImageError
from ..images import layers as layerfs
from ..kernel.fs import OPEN_DIR_NOFOLLOW, walk_dirs
from ..model.image import Image
from ..overlay.view import Found, MergedView, lookup

Owner = tuple[int, int]
DIR_MODE = 0o755  # fsutil copy.go defaultDirectoryMode; go-archive ImpliedDirectoryMode
HEREDOC_MODE = 0o644  # dispatchCopy: llb.Mkfile(path, 0644, data)
IGNORE_FILES = (".containerignore", ".dockerignore")
_OPEN_DIR = OPEN_DIR_NOFOLLOW
# moby/go-archive compression/compression_detect.go: formats by their magic numbers.
_BZIP2 = b"BZh"
_GZIP = b"\x1f\x8b\x08"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_URL_PREFIXES = ("http://", "https://", "git://", "git@", "ssh://")


# -- patterns: .dockerignore, --exclude, --parents ------------------------------------------

class Patterns:
    """moby/patternmatcher: ``.dockerignore``-style patterns over slash-separated relative
    paths. ``*`` and ``?`` stop at ``/``, ``**`` crosses folders, ``!p`` re-includes; a path
    matches when it or a parent folder matches (``MatchesOrParentMatches``); the last
    pattern that matches decides. A bad pattern raises ValueError."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.items: list[tuple[bool, str, str, re.Pattern[str] | None]] = []
        self.exclusions = False
        for text in patterns:
            text = text.strip()
            if not text:
                continue
            text = posixpath.normpath(text)
            exclusion = text.startswith("!")
            if exclusion:
                if text == "!":
                    raise ValueError('illegal exclusion pattern: "!"')
                text = text[1:]
                self.exclusions = True
            if any(match_regex(c) is None for c in text.split("/") if "**" not in c):
                raise ValueError(f"syntax error in pattern {text!r}")
            kind, regex = _compile_pattern(text)
            self.items.append((exclusion, text, kind, regex))

    def __bool__(self) -> bool:
        return bool(self.items)

    def matches(self, path: str) -> bool:
        parent = posixpath.dirname(path)
        dirs = parent.split("/") if parent else []
        matched = False
        for exclusion, text, kind, regex in self.items:
            if exclusion != matched:
                continue
            hit = _pattern_match(kind, text, regex, path)
            if not hit:
                hit = any(_pattern_match(kind, text, regex, "/".join(dirs[:i + 1]))
                          for i in range(len(dirs)))
            if hit:
                matched = not exclusion
        return matched


def _compile_pattern(pattern: str) -> tuple[str, re.Pattern[str] | None]:
    """patternmatcher ``Pattern.compile``: exact, prefix (``a/**``), suffix (``**/a``) or
    a regex."""
    out = "^"
    kind = "exact"
    i = n = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            if pattern[i:i + 1] == "*":
                i += 1
                if pattern[i:i + 1] == "/":
                    i += 1
                if i >= len(pattern):
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out += ".*"
                        kind = "regex"
                else:
                    out += "(.*/)?"
                    kind = "regex"
                if n == 0:
                    kind = "suffix"
            else:
                out += "[^/]*"
                kind = "regex"
        elif ch == "?":
            out += "[^/]"
            kind = "regex"
        elif ch in ".+()|{}$":
            out += "\\" + ch
        elif ch == "\\":
            if i < len(pattern):
                out += "\\" + pattern[i]
                i += 1
                kind = "regex"
            else:
                out += "\\\\"
        elif ch in "[]":
            out += ch
            kind = "regex"
        else:
            out += ch  # as patternmatcher: other characters go into the regex as they are
        n += 1
    if kind != "regex":
        return kind, None
    try:
        return kind, re.compile(out + r"\Z", re.DOTALL)
    except re.error as exc:
        raise ValueError(f"syntax error in pattern {pattern!r} ({exc})") from None


def _pattern_match(kind: str, text: str, regex: re.Pattern[str] | None, path: str) -> bool:
    if kind == "exact":
        return path == text
    if kind == "prefix":
        return path.startswith(text[:-2])
    if kind == "suffix":
        suffix = text[2:]
        return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
    return regex is not None and regex.match(path) is not None


def read_ignore_file(path: str) -> list[str]:
    """moby/patternmatcher ``ignorefile.ReadAll``: one pattern a line; ``#`` comment lines;
    a leading UTF-8 BOM, surrounding spaces and a leading ``/`` dropped; paths cleaned."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    out = []
    for number, line in enumerate(lines):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/") or "/"
        out.append(("!" if invert else "") + line)
    return out


# -- where a copy reads from -------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A root that COPY/ADD read from: the build context, or an image or stage (``--from``).

    ``view`` looks paths up inside the root (symlinks never leave it); ``label`` names it in
    messages; ``keep_owner`` is False for the context, whose files BuildKit receives as
    0:0, and True for ``--from``; ``ignore`` hides what the context's ignore file names.
    """

    view: MergedView
    label: str
    keep_owner: bool
    is_context: bool
    ignore: Patterns | None = None
    fingerprint: str = ""

    @classmethod
    def context(cls, folder: str, containerfile: str | None = None) -> Source:
        """The build context ``folder``. Its ignore file is, as BuildKit and Buildah look
        for one: ``<containerfile>.dockerignore`` next to the Containerfile, else
        ``.containerignore`` or ``.dockerignore`` in the folder. A bad pattern there raises
        ``ImageError`` naming the file."""
        real = os.path.realpath(folder)
        candidates = [f"{containerfile}.dockerignore"] if containerfile else []
        candidates += [os.path.join(real, name) for name in IGNORE_FILES]
        ignore = None
        fingerprint = ""
        for path in candidates:
            if os.path.isfile(path):
                try:
                    lines = read_ignore_file(path)
                    ignore = Patterns(lines)
                except (OSError, ValueError) as exc:
                    raise ImageError(f"{path}: {exc}") from None
                fingerprint = "\n".join(lines)
                break
        return cls(MergedView([real]), f"the build context {folder}", False, True,
                   ignore or None, fingerprint)

    @classmethod
    def image(cls, image: Image, label: str) -> Source:
        """``image``'s merged layers, e.g. ``Source.image(stage, "stage 'build'")``."""
        return cls(MergedView(image.layer_dirs), label, True, False)

    def hidden(self, parts: tuple[str, ...]) -> bool:
        return bool(parts) and self.ignore is not None and self.ignore.matches("/".join(parts))

    def find(self, path: str, follow_last: bool = True
             ) -> tuple[tuple[str, ...], Found | None]:
        """``path`` resolved inside the root; None where nothing is (or it is ignored)."""
        parts, found = self.view.resolve(path, follow_last=follow_last)
        return parts, (found if found is not None and self._shown(found) else None)

    def listdir(self, parts: tuple[str, ...]) -> dict[str, Found]:
        entries = self.view.listdir(parts)
        if self.ignore is None:
            return entries
        return {name: found for name, found in entries.items() if self._shown(found)}

    def _shown(self, found: Found) -> bool:
        """fsutil's walker: an ignored folder still shows when an ``!`` pattern re-includes
        something below it."""
        if not self.hidden(found.parts):
            return True
        if not (stat.S_ISDIR(found.st.st_mode) and self.ignore and self.ignore.exclusions):
            return False
        return any(self._shown(child) for child in self.view.listdir(found.parts).values())


@dataclass(frozen=True)
class _Item:
    """One resolved source, copied (or extracted) under ``name``."""

    text: str                    # the source as written, for messages
    name: str                    # its own name (not its link target's)
    found: Found | None          # the entry, symlinks followed (None: heredoc ``data``)
    data: bytes = b""            # a heredoc's content
    unpack: bool = False         # ADD: a tar archive to extract
    include: Patterns | None = None  # --parents: what of the folder is copied


# -- --chown and --chmod -------------------------------------------------------------------

def resolve_chown(spec: str, view: MergedView, where: str) -> Owner:
    """``--chown=USER[:GROUP]`` as ``(uid, gid)``, names looked up in the image ``view``.

    As BuildKit (client/llb ``WithUser``, solver/llbsolver/ops/user_linux.go ``readUser``):
    a number is an id (``root`` is 0); a user name takes its uid and gid from
    ``/etc/passwd``; a number alone is also the gid; a group name comes from
    ``/etc/group``. A name the image does not have is an error, as the Dockerfile
    reference says (``COPY --chown``).
    """
    user, _, group = spec.partition(":")
    if not user:
        raise ImageError(f"{where}: --chown={spec}: names no user; e.g. --chown=1000:1000")

    def entries(file: str) -> Iterator[list[str]]:
        data = (view.read_bytes(file) or b"").decode("utf-8", "replace")
        for line in data.splitlines():
            fields = line.split(":")
            if len(fields) > 3 and not line.startswith("#"):
                yield fields

    def number(text: str) -> int | None:
        if text == "root":
            return 0
        return int(text) if text.isdigit() else None

    uid = number(user)
    gid = uid
    if uid is None:
        for fields in entries("/etc/passwd"):
            if fields[0] == user and fields[2].isdigit() and fields[3].isdigit():
                uid, gid = int(fields[2]), int(fields[3])
                break
        else:
            raise ImageError(f"{where}: --chown={spec}: no user {user!r} in the image's "
                             f"/etc/passwd; use a number, e.g. --chown=1000:1000")
    if group:
        gid = number(group)
        if gid is None:
            for fields in entries("/etc/group"):
                if fields[0] == group and fields[2].isdigit():
                    gid = int(fields[2])
                    break
            else:
                raise ImageError(f"{where}: --chown={spec}: no group {group!r} in the image's "
                                 f"/etc/group; use a number, e.g. --chown={user}:1000")
    assert uid is not None and gid is not None
    return uid, gid


_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_SHIFT = {"u": 6, "g": 3, "o": 0}


@dataclass(frozen=True)
class Chmod:
    """A ``--chmod`` value: octal (``755``, at most ``7777``) or symbolic as chmod(1).

    Octal as BuildKit's ``dispatchCopy`` (``ParseUint(chmod, 8, 32)``, at most 07777).
    Symbolic modes (Dockerfile 1.14) follow BSD ``setmode(3)`` as tonistiigi/dchapes-mode
    ports it, with umask 0, as moby/buildkit vendors it: clauses ``[ugoa]*`` then one or
    more ``[+-=]`` with ``[rwxXst]*`` or a class to copy (``g=u``), comma-separated; ``X``
    is execute only for folders and for files that had an execute bit, with ``+`` and
    ``=`` (moby/buildkit#5835: POSIX 2024, as Linux chmod); ``-X`` is ``-x``.
    """

    text: str
    octal: int | None
    cmds: tuple[tuple[str, int, int], ...] = ()  # (command, bits, argument)

    @classmethod
    def parse(cls, text: str, where: str) -> Chmod:
        if text[:1].isdigit():
            if not all(c in "01234567" for c in text) or int(text, 8) > 0o7777:
                raise ImageError(f"{where}: --chmod={text}: invalid chmod parameter; it should "
                                 f"be an octal string between 0 and 07777, e.g. --chmod=644")
            return cls(text, int(text, 8))
        bad = ImageError(f"{where}: --chmod={text}: not a mode; use octal (e.g. --chmod=755) "
                         f"or symbolic as chmod(1) (e.g. --chmod=u=rwX,go=rX)")
        cmds: list[tuple[str, int, int]] = []

        def add(op: str, who: int, arg: int) -> None:  # dchapes-mode ``addcmd``, umask 0
            if op == "=":
                cmds.append(("-", who or 0o6777, 0))
                op = "+"
            if op in "+-X":
                cmds.append((op, (who & arg) if who else arg, 0))
            else:  # copy class ``op``; ``arg`` is the operator
                targets = ((4 if who & 0o400 else 0) | (2 if who & 0o040 else 0)
                           | (1 if who & 0o004 else 0)) if who else 7
                cmds.append(("copy" + chr(arg), targets, _SHIFT[op]))

        s = text
        while True:
            who = 0
            while s and s[0] in _WHO:
                who |= _WHO[s[0]]
                s = s[1:]
            if not s:
                raise bad
            while True:  # one operator and what follows it
                op, s = s[0], s[1:]
                if op not in "+-=":
                    raise bad
                equal_done = False
                who &= ~0o1000
                perm = perm_x = 0
                while True:
                    b = s[:1]
                    if b == "r":
                        perm |= 0o444
                    elif b == "w":
                        perm |= 0o222
                    elif b == "x":
                        perm |= 0o111
                    elif b == "X":  # BuildKit's vendored copy: X with = too, and -X is -x
                        if op != "-":
                            perm_x = 0o111
                        else:
                            perm |= 0o111
                    elif b == "s":
                        if who == 0 or who & ~0o0007:
                            perm |= 0o6000
                    elif b == "t":
                        if who == 0 or who & ~0o0007:
                            who |= 0o1000
                            perm |= 0o1000
                    elif b and b in "ugo":
                        if perm:
                            add(op, who, perm)
                            perm = 0
                        if op == "=":
                            equal_done = True
                        if perm_x:
                            add("X", who, perm_x)
                            perm_x = 0
                        add(b, who, ord(op))
                    else:
                        if perm or (op == "=" and not equal_done):
                            equal_done = True
                            add(op, who, perm)
                        if perm_x:
                            add("X", who, perm_x)
                        break
                    s = s[1:]
                if not s or s[0] == ",":
                    break
            if not s:
                return cls(text, None, tuple(cmds))
            s = s[1:]

    def apply(self, mode: int) -> int:
        """The permission bits (07777) for an entry whose ``st_mode`` is ``mode``."""
        if self.octal is not None:
            return self.octal
        old = stat.S_IMODE(mode)
        new = old
        for cmd, bits, arg in self.cmds:
            if cmd == "+":
                new |= bits
            elif cmd == "-":
                new &= ~bits
            elif cmd == "X":
                if old & 0o111 or stat.S_ISDIR(mode):
                    new |= bits
            else:  # "copy+", "copy-", "copy=": class bits at ``arg`` to the ``bits`` classes
                value = (new >> arg) & 0o7
                clear = 0o7 if cmd == "copy=" else value
                for flag, shift in ((4, 6), (2, 3), (1, 0)):
                    if bits & flag:
                        if cmd != "copy+":
                            new &= ~(clear << shift)
                        if cmd != "copy-":
                            new |= value << shift
        return new


# -- paths ---------------------------------------------------------------------------------

def is_url(src: str) -> bool:
    """A remote source (``dispatchCopy``'s ``isHTTPSource``/``isGitSource``)."""
    return src.startswith(_URL_PREFIXES)


def dest_path(dest: str, workdir: str) -> str:
    """The destination as an absolute clean path, a trailing ``/`` kept (BuildKit
    ``pathRelativeToWorkingDir``: ``.`` and ``""`` are the working directory, a folder)."""
    if dest in ("", "."):
        dest = "./"
    full = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    clean = "/" + posixpath.normpath(full).lstrip("/")
    if (dest.endswith("/") or dest.endswith("/.")) and not clean.endswith("/"):
        clean += "/"
    return clean


def _clean_source(src: str) -> str:
    """``system.NormalizePath("/", src)``: absolute, clean, ``..`` stopped at the root."""
    return "/" + posixpath.normpath("/" + src).lstrip("/")


def contains_wildcards(text: str) -> bool:
    """fsutil ``containsWildcards``: ``*``, ``?`` or ``[`` not escaped by ``\\``."""
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] in "*?[":
            return True
        i += 1
    return False


def match_regex(pattern: str) -> re.Pattern[str] | None:
    """Go's ``filepath.Match`` for one path component, as a regex (None for a bad pattern,
    which matches nothing: fsutil ignores ``ErrBadPattern``)."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            if negated:
                i += 1
            ranges: list[str] = []
            count = 0
            while True:
                if i < n and pattern[i] == "]" and count:
                    break
                lo, i = _class_char(pattern, i)
                if lo is None:
                    return None
                hi = lo
                if i < n and pattern[i] == "-":
                    upper, i = _class_char(pattern, i + 1)
                    if upper is None:
                        return None
                    hi = upper
                if lo <= hi:
                    ranges.append(f"{re.escape(lo)}-{re.escape(hi)}")
                count += 1
            if ranges:
                out.append(f"[{'^' if negated else ''}{''.join(ranges)}]")
            else:
                out.append("[^/]" if negated else "(?!)")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """``getEsc`` of Go's ``filepath.Match``: one class character and the index after it."""
    if i >= len(pattern) or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            return None, i
    if i + 1 >= len(pattern):
        return None, i  # a class never closed
    return pattern[i], i + 1


def _expand(source: Source, src: str) -> list[tuple[str, ...]]:
    """The paths (as components) ``src`` names in ``source``.

    fsutil ``ResolveWildcards``: the part before the first component holding a wildcard
    is resolved (symlinks followed inside the root); the rest is matched component by
    component under it, in name order, never through a symlink, and a matched folder is
    not searched further.
    """
    comps = [c for c in _clean_source(src).split("/") if c]
    first = next((i for i, c in enumerate(comps) if contains_wildcards(c)), None)
    if first is None:
        return [tuple(comps)]
    base, _found = source.view.resolve("/".join(comps[:first]))
    regexes = [match_regex(c) for c in comps[first:]]
    out: list[tuple[str, ...]] = []

    def walk(parts: tuple[str, ...], depth: int) -> None:
        regex = regexes[depth]
        if regex is None:
            return
        for name, entry in sorted(source.listdir(parts).items()):
            if not regex.fullmatch(name):
                continue
            if depth == len(regexes) - 1:
                out.append((*parts, name))
            elif stat.S_ISDIR(entry.st.st_mode):
                walk((*parts, name), depth + 1)

    walk(base, 0)
    return out


# -- the plan ------------------------------------------------------------------------------

@dataclass
class CopyPlan:
    """A checked COPY/ADD: ``key`` for the step cache, ``apply(layer)`` to write it."""

    keyword: str
    source: Source
    items: list[_Item]
    dest: str
    lower: tuple[str, ...]
    owner: Owner | None
    chmod: Chmod | None
    exclude: Patterns | None
    link: bool
    where: str
    key: str = ""

    def apply(self, layer: str) -> None:
        """Write the copy into ``layer``, an empty directory that becomes the new layer."""
        out = _Layer(layer, () if self.link else self.lower)
        copier = _Copier(out, self)
        for item in self.items:
            if item.unpack:
                _Untar(out, self, item).run()
            else:
                copier.copy_item(item)
        out.finish()


def plan(keyword: str, source: Source, srcs: Sequence[str], dest: str, *,
         lower: Sequence[str], workdir: str = "/", chown: str | None = None,
         chmod: str | None = None, exclude: Sequence[str] = (), parents: bool = False,
         link: bool = False, unpack: bool | None = None, checksum: str | None = None,
         contents: Sequence[tuple[str, str | bytes]] = (),
         where: str = "Containerfile") -> CopyPlan:
    """Check a ``COPY`` or ``ADD`` (``keyword``) of ``srcs`` (variables already expanded)
    and heredoc ``contents`` to ``dest``, and return its plan.

    ``lower`` are the image's layer directories so far, bottom first; ``workdir`` starts
    a relative ``dest``; ``unpack`` is ADD's ``--unpack`` (None: local archives are
    extracted); ``link`` is ``--link`` (ignored with ``--chmod``, as BuildKit does);
    ``where`` is ``file:line`` for messages. Raises ``ImageError`` for a URL, a missing
    source, a bad ``--chown``, ``--chmod`` or ``--exclude``, ``--checksum`` on a local
    source, or several sources to a destination that is not a folder.
    """
    keyword = keyword.upper()
    add = keyword == "ADD"
    at = f"{where}: {keyword}"
    if not srcs and not contents:
        raise ImageError(f"{at}: needs a source and a destination; e.g. `{keyword} app.py /app/`")
    for src in srcs:
        if is_url(src):
            if add:
                raise ImageError(f"{at} {src}: a URL, and nsbox builds have no network; download "
                                 f"it into {source.label} first (e.g. `curl -LO {src}`) and "
                                 f"ADD or COPY it from there")
            raise ImageError(f"{at} {src}: COPY takes no URL (Docker: \"source can't be a URL "
                             f"for COPY\"); download it into {source.label} and COPY it from "
                             f"there")
    if checksum is not None:
        raise ImageError(f"{at}: --checksum={checksum} checks a download (HTTP or git), and "
                         f"these sources are local; drop --checksum")
    view = MergedView(list(lower))
    owner = resolve_chown(chown, view, at) if chown else None
    mode = Chmod.parse(chmod, at) if chmod else None
    try:
        excludes = Patterns(exclude) if exclude else None
    except ValueError as exc:
        raise ImageError(f"{at}: --exclude: {exc}; e.g. --exclude=*.pyc") from None
    dest_full = dest_path(dest, workdir)
    items: list[_Item] = []
    for src in srcs:
        items.extend(_items(source, src, at, add and unpack is not False, parents))
    for name, data in contents:
        items.append(_Item(f"<<{name}", posixpath.basename(name) or name, None,
                           data.encode() if isinstance(data, str) else bytes(data)))
    link = link and mode is None
    files = [i for i in items if not i.unpack
             and (i.found is None or not stat.S_ISDIR(i.found.st.st_mode))]
    if len(items) > 1 and files and not dest_full.endswith("/"):
        # The reference's rule. BuildKit does not check it: it merges several folders
        # into one (its own exclude_patterns_test.go does) but writes each file over the
        # last, so only a file among several sources is refused.
        there = None if link else view.resolve(dest_full)[1]
        if there is None or not stat.S_ISDIR(there.st.st_mode):
            names = ", ".join(i.text for i in items[:4]) + (", ..." if len(items) > 4 else "")
            raise ImageError(f"{at}: more than one source ({names}) needs a destination folder "
                             f"ending in '/'; e.g. `{keyword} a b {dest_full}/`")
    result = CopyPlan(keyword, source, items, dest_full, tuple(lower), owner, mode, excludes,
                      link, at)
    h = hashlib.sha256()
    h.update(repr((keyword, dest_full, owner, mode.text if mode else None, list(exclude), link,
                   source.keep_owner, source.fingerprint)).encode())
    for item in items:
        h.update(f"\0item\0{item.name}\0{item.unpack}\0".encode("utf-8", "surrogateescape"))
        if item.found is None:
            h.update(item.data)
        else:
            _hash_tree(h, result, item, item.found, item.name, "")
    result.key = h.hexdigest()
    return result


def _items(source: Source, src: str, at: str, unpack: bool, parents: bool) -> list[_Item]:
    """The sources ``src`` names (BuildKit: one ``llb.Copy`` per source, wildcards
    resolved by fsutil). With ``parents``, ``src`` is split at ``/./`` into the folder to
    copy and an include pattern for what below it (dispatchCopy)."""
    include = None
    if parents:
        pivot, sep, pattern = src.partition("/./")
        if not sep:
            pivot, pattern = "/", src
        pattern = _clean_source(pattern).lstrip("/")
        try:
            include = Patterns([pattern])
        except ValueError as exc:
            raise ImageError(f"{at} {src}: {exc}") from None
        if not contains_wildcards(pivot) and not contains_wildcards(pattern):
            _parts, found = source.find(posixpath.join(_clean_source(pivot), pattern))
            if found is None:
                raise _missing(source, src, posixpath.join(_clean_source(pivot), pattern), at)
        src = pivot
    out = []
    try:
        matches = _expand(source, src)
    except ImageError as exc:
        raise ImageError(f"{at} {src}: {exc} in {source.label}") from None
    for match in matches:
        path = "/" + "/".join(match)
        try:
            _parts, found = source.find(path)
        except ImageError as exc:
            raise ImageError(f"{at} {src}: {exc} in {source.label}") from None
        if found is None:
            raise _missing(source, src, path, at)
        extract = (unpack and include is None and stat.S_ISREG(found.st.st_mode)
                   and _is_archive(found.path, f"{at} {src}"))
        out.append(_Item(src, match[-1] if match else "/", found, unpack=extract,
                         include=include))
    return out


def _missing(source: Source, src: str, path: str, at: str) -> ImageError:
    """What to say when ``src`` names nothing in ``source``."""
    parts, found = source.find(path, follow_last=False)
    if found is not None and stat.S_ISLNK(found.st.st_mode):
        real, _ = source.view.resolve(path)
        return ImageError(f"{at} {src}: a symlink to {os.readlink(found.path)!r}, which "
                          f"resolves inside {source.label} (links never leave it) to "
                          f"{_show(real)}, and nothing is there")
    if source.view.resolve(path)[1] is not None and source.hidden(parts):
        return ImageError(f"{at} {src}: excluded by the context's ignore file "
                          f"(.dockerignore); Docker does not send it to the build either")
    if source.is_context and ".." in src.split("/"):
        return ImageError(f"{at} {src}: outside the build context; Docker reads it as "
                          f"{_show(parts)} inside it ('..' stops at the context's root), and "
                          f"{source.label} holds no such file")
    return ImageError(f"{at} {src}: not found in {source.label}")


def _filter(plan: CopyPlan, item: _Item, rel: str, is_dir: bool) -> tuple[bool, bool]:
    """fsutil ``copier.copy``'s include and exclude checks for the path ``rel`` inside a
    copied folder: ``(include, visit)``. A folder not included is still visited (its
    folder made only if something below it is copied) unless nothing below can count."""
    if not rel:
        return True, True
    include = item.include is None or item.include.matches(rel)
    excluded = plan.exclude is not None and plan.exclude.matches(rel)
    if excluded:
        include = False
    if include:
        return True, True
    can_skip = item.include is None and not (plan.exclude and plan.exclude.exclusions)
    return False, is_dir and not can_skip


def _hash_tree(h: Any, plan: CopyPlan, item: _Item, found: Found, name: str, rel: str
               ) -> None:
    """Names, kinds, modes, link targets, xattrs and contents (not mtimes) of what the copy
    reads, and owners where they are kept (``--from``)."""
    st = found.st
    include, visit = _filter(plan, item, rel, stat.S_ISDIR(st.st_mode))
    if not include and not visit:
        return
    owner = f"{st.st_uid}:{st.st_gid}" if plan.source.keep_owner else ""
    h.update(f"{name}\0{include}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0"
             f"{owner}\0".encode("utf-8", "surrogateescape"))
    if not stat.S_ISLNK(st.st_mode):
        for key, value in layerfs._xattrs(found.path).items():
            h.update(key.encode() + b"=" + value + b"\0")
    if stat.S_ISDIR(st.st_mode):
        for child, entry in sorted(plan.source.listdir(found.parts).items()):
            _hash_tree(h, plan, item, entry, f"{name}/{child}", f"{rel}/{child}".lstrip("/"))
    elif stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(found.path).encode("utf-8", "surrogateescape"))
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(layerfs.CHUNK):
                h.update(chunk)
    h.update(b"\0")


def make_dirs(*, lower: Sequence[str], layer: str, path: str, owner: Owner | None = None,
              mode: int = DIR_MODE) -> tuple[str, ...]:
    """``mkdir -p path`` in the image, written into ``layer`` (WORKDIR: BuildKit's
    ``llb.Mkdir(path, 0755, WithParents)``, owned by the ``USER``). Symlinks on the way
    are followed inside the image's root; missing folders get ``mode`` and ``owner``
    (default 0:0). Returns the resolved components. Raises ``ImageError`` where a file is
    in the way."""
    out = _Layer(layer, tuple(lower))
    parts, _found = out.view.resolve(path)
    out.mkdirall(parts, mode, owner or (0, 0), f"WORKDIR {path}")
    out.finish()
    return parts


# -- the layer being written ---------------------------------------------------------------

class _Layer:
    """The new layer ``root`` (a private empty directory) over the image's ``lower`` layers.

    ``view`` is what the step sees as it writes: the lower layers with ``root`` on top.
    Every write goes through directory fds opened with ``O_NOFOLLOW`` one component at a
    time, at components ``view`` resolved, so nothing is ever written outside ``root``.
    A folder of the image that gets a new entry is copied up (its owner, mode, xattrs and
    times kept, as overlayfs does), so it looks unchanged.
    """

    def __init__(self, root: str, lower: Sequence[str]) -> None:
        self.root = root
        self.lower = MergedView(list(lower))
        self.view = MergedView([*lower, root])
        self.times: dict[tuple[str, ...], tuple[int, int]] = {}

    def dirfd(self, parts: tuple[str, ...]) -> int:
        """An fd of folder ``parts`` in the layer; folders of the image on the way are
        copied up."""
        def missing(fd: int, i: int) -> int:
            below = lookup(self.lower.layers, list(parts[:i + 1]))
            if below is None or not stat.S_ISDIR(below[1].st_mode):
                raise ImageError(f"{_show(parts[:i + 1])}: not a folder in the image") from None
            os.mkdir(parts[i], 0o700, dir_fd=fd)
            sub = os.open(parts[i], _OPEN_DIR, dir_fd=fd)
            st = below[1]
            try:
                layerfs.chown(sub, st.st_uid, st.st_gid)
                os.fchmod(sub, stat.S_IMODE(st.st_mode))
                for name, value in layerfs._xattrs(below[0]).items():
                    os.setxattr(sub, name, value)
            except BaseException:
                os.close(sub)
                raise
            self.times.setdefault(parts[:i + 1], (st.st_atime_ns, st.st_mtime_ns))
            return sub

        def blocked(_fd: int, i: int) -> int:
            raise ImageError(f"{_show(parts[:i + 1])}: not a folder in the layer being "
                             f"written") from None

        root = os.open(self.root, _OPEN_DIR)
        try:
            return walk_dirs(root, parts, missing=missing, blocked=blocked)
        finally:
            os.close(root)

    def entry(self, parts: tuple[str, ...]) -> tuple[str, os.stat_result] | None:
        """What the image shows at ``parts`` now (the last component not followed)."""
        return lookup(self.view.layers, list(parts))

    def mkdirall(self, parts: tuple[str, ...], mode: int, owner: Owner, what: str) -> None:
        """fsutil ``MkdirAll``: make each missing folder of ``parts`` (resolved components)
        with ``mode`` and ``owner``; a non-folder on the way is an error."""
        for i in range(1, len(parts) + 1):
            hit = self.entry(parts[:i])
            if hit is not None:
                if not stat.S_ISDIR(hit[1].st_mode):
                    raise ImageError(f"{what}: {_show(parts[:i])} is a {_kind(hit[1])} in the "
                                     f"image, not a folder; the destination needs a folder "
                                     f"there")
                continue
            self.mkdir(parts[:i], mode, owner)

    def mkdir(self, parts: tuple[str, ...], mode: int, owner: Owner) -> None:
        fd = self.dirfd(parts[:-1])
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=fd)
            layerfs.chown(parts[-1], owner[0], owner[1], dir_fd=fd)
            os.chmod(parts[-1], mode & 0o777, dir_fd=fd)
        finally:
            os.close(fd)

    def remove(self, parts: tuple[str, ...]) -> None:
        """Remove what this layer holds at ``parts``; the image's own entry there is then
        hidden by what replaces it."""
        fd = self.dirfd(parts[:-1])
        try:
            try:
                st = os.lstat(parts[-1], dir_fd=fd)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(parts[-1], dir_fd=fd)
            else:
                os.unlink(parts[-1], dir_fd=fd)
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Set the recorded folder times, deepest first (an entry made in a folder changes
        its mtime)."""
        for parts in sorted(self.times, key=len, reverse=True):
            if not parts:
                continue
            fd = self.dirfd(parts[:-1])
            try:
                os.utime(parts[-1], ns=self.times[parts], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "special file"


def _show(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


# -- COPY: fsutil's copier -----------------------------------------------------------------

@dataclass
class _Pending:
    """A folder of the source whose folder in the image is made only when something below
    it is copied (fsutil ``parentDirs``)."""

    src: Found
    target: tuple[str, ...]
    exists: bool
    made: bool = False


@dataclass
class _Copier:
    """fsutil ``copy.Copy`` with ``CopyDirContents`` and ``FollowLinks``, writing one layer
    over the merged image (see the module docstring for where it differs)."""

    layer: _Layer
    plan: CopyPlan
    inodes: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)

    def __post_init__(self) -> None:
        chmod = self.plan.chmod
        self.dir_mode = chmod.octal if chmod and chmod.octal is not None else DIR_MODE
        self.dir_owner = self.plan.owner or (0, 0)

    def what(self, item: _Item) -> str:
        return f"{self.plan.where} {item.text}"

    def owner(self, st: os.stat_result | None) -> Owner:
        if self.plan.owner is not None:
            return self.plan.owner
        return (st.st_uid, st.st_gid) if st and self.plan.source.keep_owner else (0, 0)

    def mode(self, st_mode: int) -> int:
        return self.plan.chmod.apply(st_mode) if self.plan.chmod else stat.S_IMODE(st_mode)

    def copy_item(self, item: _Item) -> None:
        """fsutil ``Copy`` and ``prepareTargetDir`` for one source."""
        layer = self.layer
        dest = self.plan.dest
        head, tail = posixpath.split(dest)
        parts, _found = layer.view.resolve(head if tail not in ("", ".") else dest)
        layer.mkdirall(parts, self.dir_mode, self.dir_owner, self.what(item))
        target, there = layer.view.resolve(posixpath.normpath(dest))
        is_dir = item.found is not None and stat.S_ISDIR(item.found.st.st_mode)
        if not is_dir and there is not None and stat.S_ISDIR(there.st.st_mode):
            target = (*target, item.name)
        layer.mkdirall(target if is_dir and there is None else target[:-1], self.dir_mode,
                       self.dir_owner, self.what(item))
        if item.found is None:
            self.write_data(item, target)
        elif is_dir:
            self.copy_dir(item, item.found, target, "")
        else:
            self.copy_file(item, item.found, target)

    def copy(self, item: _Item, src: Found, target: tuple[str, ...], rel: str) -> None:
        """One entry below a copied folder (``rel``: its path inside that folder)."""
        is_dir = stat.S_ISDIR(src.st.st_mode)
        include, visit = _filter(self.plan, item, rel, is_dir)
        if is_dir and (include or visit):
            self.copy_dir(item, src, target, rel, include)
        elif include:
            self.make_pending(item)
            self.copy_file(item, src, target)

    def dir_target(self, item: _Item, src: Found, target: tuple[str, ...]
                   ) -> tuple[tuple[str, ...], bool]:
        """Where the folder ``src`` goes, and whether a folder is already there. A symlink
        of the image there is followed inside its root (issue 9)."""
        there = self.layer.entry(target)
        if there is not None and stat.S_ISLNK(there[1].st_mode):
            target, found = self.layer.view.resolve(_show(target))
            there = (found.path, found.st) if found is not None else None
        if there is not None and not stat.S_ISDIR(there[1].st_mode):
            raise ImageError(f"{self.what(item)}: cannot copy the folder {_show(src.parts)} "
                             f"onto {_show(target)}, a {_kind(there[1])} in the image")
        return target, there is not None

    def copy_dir(self, item: _Item, src: Found, target: tuple[str, ...], rel: str,
                 include: bool = True) -> None:
        target, exists = self.dir_target(item, src, target)
        pending = _Pending(src, target, exists)
        self.pending.append(pending)
        try:
            if include:
                self.make_pending(item)
            for name, child in sorted(self.plan.source.listdir(src.parts).items()):
                self.copy(item, child, (*target, name), f"{rel}/{name}".lstrip("/"))
        finally:
            self.pending.pop()
        if not pending.made or not target or (rel and not include and exists):
            return  # (a folder kept only for what is below it keeps its metadata)
        if rel:
            # copyFileInfo: the owner, mode, xattrs and times of the source folder.
            fd = self.layer.dirfd(target)
            try:
                uid, gid = self.owner(src.st)
                layerfs.chown(fd, uid, gid)
                os.fchmod(fd, self.mode(src.st.st_mode))
                for key, value in layerfs._xattrs(src.path).items():
                    os.setxattr(fd, key, value)
            finally:
                os.close(fd)
        # The top folder keeps its owner and mode but takes the source's times
        # (fsutil ``restoreFileTimestamp``).
        self.layer.times[target] = (src.st.st_atime_ns, src.st.st_mtime_ns)

    def make_pending(self, item: _Item) -> None:
        """Make the folders still pending above what is about to be copied."""
        for pending in self.pending:
            if not pending.made:
                if not pending.exists:
                    self.layer.mkdirall(pending.target[:-1], self.dir_mode, self.dir_owner,
                                        self.what(item))
                    self.layer.mkdir(pending.target, 0o700, (0, 0))
                pending.made = True

    def replace(self, item: _Item, what: str, target: tuple[str, ...]) -> int:
        """fsutil ``ensureEmptyFileTarget``: clear ``target`` for a new non-folder (a folder
        there is an error); returns an fd of its parent folder."""
        there = self.layer.entry(target)
        if not target or (there is not None and stat.S_ISDIR(there[1].st_mode)):
            raise ImageError(f"{self.what(item)}: cannot replace the folder {_show(target)} "
                             f"of the image with the {what}")
        self.layer.remove(target)
        return self.layer.dirfd(target[:-1])

    def write_data(self, item: _Item, target: tuple[str, ...]) -> None:
        """A heredoc source: a 0644 file (``llb.Mkfile``) copied as any file."""
        fd = self.replace(item, f"heredoc {item.text}", target)
        try:
            out = os.open(target[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=fd)
            try:
                layerfs._write_all(out, item.data)
                uid, gid = self.owner(None)
                layerfs.chown(out, uid, gid)
                os.fchmod(out, self.mode(stat.S_IFREG | HEREDOC_MODE))
            finally:
                os.close(out)
        finally:
            os.close(fd)

    def copy_file(self, item: _Item, src: Found, target: tuple[str, ...]) -> None:
        """Create the non-folder ``src`` as ``target``."""
        st = src.st
        fd = self.replace(item, f"{_kind(st)} {_show(src.parts)}", target)
        name = target[-1]
        try:
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                first = self.inodes.get(key) if st.st_nlink > 1 else None
                if first is not None and self.layer.entry(first) is not None:
                    sfd = self.layer.dirfd(first[:-1])
                    try:
                        os.link(first[-1], name, src_dir_fd=sfd, dst_dir_fd=fd,
                                follow_symlinks=False)
                    finally:
                        os.close(sfd)
                else:
                    _copy_file(src.path, fd, name)
                    if st.st_nlink > 1:
                        self.inodes[key] = target
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src.path), name, dir_fd=fd)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(name, 0o600, dir_fd=fd)
            elif stat.S_ISSOCK(st.st_mode):
                return  # a layer tar cannot hold a socket; Docker's layers leave them out too
            else:
                raise ImageError(f"{self.what(item)}: {_show(src.parts)} is a device node; a "
                                 f"layer holds none (a box gets a fresh /dev)")
            uid, gid = self.owner(st)
            layerfs.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, self.mode(st.st_mode), dir_fd=fd)
                for xname, value in layerfs._xattrs(src.path).items():
                    os.setxattr(f"/proc/self/fd/{fd}/{name}", xname, value,
                                follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=fd,
                     follow_symlinks=False)
        finally:
            os.close(fd)


def _copy_file(src: str, dirfd: int, name: str) -> None:
    """Copy the file ``src`` to a new file ``name`` in the folder open as ``dirfd``."""
    layerfs._copy_file(src, f"/proc/self/fd/{dirfd}/{name}")


# -- ADD: local tar archives ---------------------------------------------------------------

def _open_stream(path: str, what: str) -> IO[bytes]:
    """``path`` decompressed by its content (moby/go-archive ``DecompressStream``)."""
    raw = open(path, "rb")
    try:
        head = raw.read(6)
        raw.seek(0)
        if head.startswith(_BZIP2):
            return bz2.BZ2File(raw)
        if head.startswith(_GZIP):
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        if head.startswith(_XZ):
            return lzma.LZMAFile(raw)
        if head.startswith(_ZSTD) or (len(head) >= 4 and head[0] & 0xF0 == 0x50
                                       and head[1:4] == b"\x2a\x4d\x18"):
            raise ImageError(f"{what}: zstd-compressed, which this Python cannot decompress, "
                             f"so nsbox cannot tell whether it is a tar to extract; recompress "
                             f"it with gzip or xz, or COPY it to copy it as it is")
        return raw
    except BaseException:
        raw.close()
        raise


def _is_archive(path: str, what: str) -> bool:
    """BuildKit ``isArchivePath``: it decompresses and its first tar header reads."""
    try:
        stream = _open_stream(path, what)
    except OSError:
        return False
    try:
        with tarfile.open(fileobj=_Guarded(stream), mode="r|", encoding="utf-8",
                          errors="surrogateescape") as tar:
            return tar.next() is not None
    except (tarfile.TarError, _Damaged):
        return False
    finally:
        stream.close()


class _Damaged(Exception):
    """Reading (decompressing) an archive failed: the archive is bad, not the layer."""


class _Guarded(io.RawIOBase):
    """Reads ``inner``, turning its read and decompression errors into ``_Damaged``, so
    they are told apart from errors writing the layer."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self.inner.read(len(b))
        except (OSError, EOFError, lzma.LZMAError, layerfs.zlib_error()) as exc:
            raise _Damaged(str(exc) or type(exc).__name__) from None
        b[:len(data)] = data
        return len(data)


class _Untar:
    """moby/go-archive ``Unpack`` of one archive into the destination folder, as BuildKit's
    ``unpack`` calls it (``chrootarchive.Untar`` rooted at the destination)."""

    def __init__(self, layer: _Layer, plan: CopyPlan, item: _Item) -> None:
        self.layer = layer
        self.plan = plan
        self.item = item
        self.what = f"{plan.where} {item.text}"
        self.root: tuple[str, ...] = ()
        self.dirs: list[tuple[tuple[str, ...], int]] = []

    def refuse(self, name: str, problem: str) -> ImageError:
        return ImageError(f"{self.what}: archive entry {name!r}: {problem}")

    def run(self) -> None:
        assert self.item.found is not None
        layer = self.layer
        # unpack.go: the destination is resolved in the image and made (0755, --chown).
        self.root, _found = layer.view.resolve(posixpath.normpath(self.plan.dest))
        layer.mkdirall(self.root, DIR_MODE, self.plan.owner or (0, 0), self.what)
        stream = _open_stream(self.item.found.path, self.what)
        try:
            with tarfile.open(fileobj=_Guarded(stream), mode="r|", encoding="utf-8",
                              errors="surrogateescape") as tar:
                for member in tar:
                    self.entry(tar, member)
        except (tarfile.TarError, _Damaged) as exc:
            raise ImageError(f"{self.what}: not a readable tar archive ({exc}); the file is "
                             f"damaged or cut short") from None
        finally:
            stream.close()
        for parts, mtime in self.dirs:
            layer.times[parts] = (mtime * 10**9, mtime * 10**9)

    def resolve_parent(self, parent: str) -> tuple[str, ...]:
        """go-archive ``resolveArchivePath``: the parent folder of an entry, resolved with
        the destination as the root."""
        if not parent:
            return self.root
        return self.layer.view.resolve(parent, root=self.root)[0]

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        layer = self.layer
        name = posixpath.normpath(m.name.lstrip("/"))
        if name == ".":
            return
        if name == ".." or name.startswith("../"):
            raise self.refuse(m.name, "it names a path outside the destination")
        parent, base = posixpath.split(name)
        if base.startswith(layerfs.WHITEOUT_PREFIX):
            raise self.refuse(m.name, f"names starting with {layerfs.WHITEOUT_PREFIX!r} mark "
                                      f"deletions in a layer, so a layer cannot hold it; "
                                      f"rename it in the archive")
        if m.ischr() or m.isblk():
            raise self.refuse(m.name, f"a device node ({m.devmajor}:{m.devminor}); a layer "
                                      f"holds none (a box gets a fresh /dev)")
        if not (m.isdir() or m.isreg() or m.issym() or m.islnk() or m.isfifo()):
            raise self.refuse(m.name, f"an entry of tar type {m.type!r}, which is not handled")
        pparts = self.resolve_parent(parent)
        target = (*pparts, base)
        there = layer.entry(target)
        opaque = False
        if there is not None and not (stat.S_ISDIR(there[1].st_mode) and m.isdir()):
            # Replaced. A folder replacing what replaced a folder of the image must not
            # show that folder's old entries again: it is made opaque.
            below = lookup(layer.lower.layers, list(target))
            layer.remove(target)
            opaque = (m.isdir() and below is not None and stat.S_ISDIR(below[1].st_mode)
                      and not stat.S_ISDIR(there[1].st_mode))
        # createImpliedDirectories: missing parents are 0755, owned by root.
        layer.mkdirall(pparts, DIR_MODE, (0, 0), self.what)
        fd = layer.dirfd(pparts)
        try:
            self.create(tar, m, fd, target, opaque)
        finally:
            os.close(fd)

    def create(self, tar: tarfile.TarFile, m: tarfile.TarInfo, fd: int,
               target: tuple[str, ...], opaque: bool) -> None:
        """go-archive ``createTarFile`` for entry ``m`` at ``target`` (parent open as
        ``fd``)."""
        base = target[-1]
        if m.isdir():
            try:
                os.mkdir(base, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            if opaque:
                os.setxattr(f"/proc/self/fd/{fd}/{base}", layerfs.OPAQUE_XATTR, b"y",
                            follow_symlinks=False)
            self.dirs.append((target, int(m.mtime)))
        elif m.isreg():
            out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=fd)
            try:
                data = tar.extractfile(m)
                if data is not None:
                    while chunk := data.read(layerfs.CHUNK):
                        layerfs._write_all(out, chunk)
            finally:
                os.close(out)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=fd)
        elif m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=fd)
        else:
            self.hardlink(m, fd, target)
        uid, gid = self.plan.owner or (m.uid, m.gid)
        os.chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(os.lstat(base, dir_fd=fd).st_mode):
            if m.issym():
                ns = int(m.mtime) * 10**9
                os.utime(base, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)
            return  # a hardlink to a symlink: its mode and times are the link's
        path = f"/proc/self/fd/{fd}/{base}"
        for key, value in m.pax_headers.items():
            xname = key[len(layerfs.PAX_XATTR):]
            if key.startswith(layerfs.PAX_XATTR) and layerfs.keep_xattr(xname):
                os.setxattr(path, xname, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
        os.chmod(base, m.mode & 0o7777, dir_fd=fd)
        if not m.isdir():
            ns = int(m.mtime) * 10**9
            os.utime(base, ns=(ns, ns), dir_fd=fd)

    def hardlink(self, m: tarfile.TarInfo, fd: int, target: tuple[str, ...]) -> None:
        """go-archive ``resolveHardlinkTarget``: the target is a path below the destination
        (an absolute one too); one only the image below this layer has is copied up first,
        as overlayfs does before it links."""
        link = posixpath.normpath(m.linkname.lstrip("/"))
        if link in (".", "..") or link.startswith("../"):
            raise self.refuse(m.name, f"a hardlink to {m.linkname!r}, outside the destination")
        lparent, lbase = posixpath.split(link)
        pparts = self.resolve_parent(lparent)
        there = self.layer.entry((*pparts, lbase))
        if there is None or stat.S_ISDIR(there[1].st_mode):
            raise self.refuse(m.name, f"a hardlink to {m.linkname!r}, which is "
                                      f"{'a folder' if there else 'not there'}")
        sfd = self.layer.dirfd(pparts)
        try:
            try:
                os.lstat(lbase, dir_fd=sfd)
            except FileNotFoundError:
                _copy_up(there, sfd, lbase)
            os.link(lbase, target[-1], src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(sfd)


def _copy_up(there: tuple[str, os.stat_result], dirfd: int, name: str) -> None:
    """Copy the image's non-folder ``there`` into this layer as ``name``."""
    path, st = there
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(path), name, dir_fd=dirfd)
    elif stat.S_ISREG(st.st_mode):
        _copy_file(path, dirfd, name)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dirfd)
    else:
        os.mkfifo(name, stat.S_IMODE(st.st_mode), dir_fd=dirfd)
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dirfd, follow_symlinks=False)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dirfd, follow_symlinks=False)
