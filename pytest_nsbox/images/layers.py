"""Layer directories and layer tars: the two forms of one layer, and the safe way between them.

On disk a layer is a directory in overlay form, used directly as an overlayfs lower layer:
a deletion is a 0:0 character device (a *whiteout*), a directory that hides everything
below it carries ``trusted.overlay.opaque=y`` (``user.overlay.opaque=y`` in a rootless
owner's store, whose boxes mount with ``userxattr``: ``OPAQUE_XATTR``). A normal user may
make the whiteouts as well: Linux 5.8 lets anyone ``mknod`` a 0:0 character device
("vfs: allow unprivileged whiteout creation"), so the format is the same. In a tar (OCI image spec, ``layer.md``) a
deletion is an empty file ``.wh.NAME`` and an opaque directory holds ``.wh..wh..opq``.

``write_tar`` makes the canonical tar of a layer directory: entries sorted by name, a
directory before what it holds, in each directory the opaque marker first, then the
whiteouts, then the rest; no user or group names, integer mtimes, PAX format. The same
directory always gives the same bytes, so a layer's ``diff_id`` (sha256 of its tar) is a
pure function of its directory.

``unpack_tar`` is the way in for tars nobody here made. Every entry is created through
directory fds opened one component at a time with ``O_NOFOLLOW`` below a private
temporary directory, so an entry can never be written outside it: absolute names, ``..``,
writing through a symlink, hardlinks to anything but an earlier entry of the same tar, and
device nodes other than whiteouts are refused with an ``ImageError`` naming the entry.

Whiteouts follow the image spec (``layer.md``, "Whiteouts"), whatever the order of the
entries in the tar: a whiteout ``.wh.NAME`` hides NAME in the *lower* layers only, never an
entry of its own layer, and an opaque marker hides the lower layers' children of its
directory only. So the ``.wh.`` whiteouts are applied after the last entry: where the layer
has nothing at NAME, NAME becomes a whiteout device; where the layer has a directory at
NAME (``a/.wh.b`` next to ``a/b/c/new``), that directory becomes opaque, which is how
overlayfs says "a new directory replacing the lower one"; where the layer has a file or a
link at NAME, that entry already hides the lower one. A whiteout below something that is
not a directory in this layer hides nothing more and is dropped.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO

from ..errors import ImageError
from ..kernel import userns
from ..kernel.fs import OPEN_DIR_NOFOLLOW, walk_dirs
from ..overlay.view import is_opaque, is_whiteout

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: What marks an opaque directory in this process's layers (``kernel.userns.overlay_xattr``).
OPAQUE_XATTR = userns.overlay_xattr("opaque")
# Overlay bookkeeping a copy must not carry, and the two that would change what a layer
# means if dropped (only written with redirect_dir=on / metacopy=on mounts).
_OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
_OVERLAY_MEANINGFUL = ("redirect", "metacopy")
PAX_XATTR = "SCHILY.xattr."
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


def chown(target: str | int, uid: int, gid: int, *, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    """Give a layer's file the owner its tar (or its source) names: ``os.chown`` (an
    int ``target`` is a descriptor: ``os.fchown``).

    A rootless owner leaves every file its own, which its boxes see as root: it may not
    give files to other IDs, and a file it gave to a subordinate ID (what the box would
    show as that owner) it could no longer read, change or delete outside the boxes' user
    namespace (podman runs all its storage inside that namespace, ``podman unshare``).
    This is containers/storage's ``ignore_chown_errors`` (storage.conf(5): for "a single
    UID/GID mapping", files are owned by the user "and a container's processes see them
    owned by root"); the owners a pulled layer's tar names are kept in its blob, which
    ``save`` and ``push`` send as it came."""
    if userns.rootless():
        return
    if isinstance(target, int):
        os.fchown(target, uid, gid)
    else:
        os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=follow_symlinks)


def owner_ids(st: os.stat_result) -> tuple[int, int]:
    """The owner a layer tar names for a file with stat ``st``: its uid and gid as the
    boxes see them; for a rootless owner that is through its user namespace's maps (the
    user is root, a subordinate ID the ID it stands for, any other ``65534``:
    ``kernel.userns.IdMaps``), so a layer made rootless has the tar one made as root has."""
    if not userns.rootless():
        return st.st_uid, st.st_gid
    maps = userns.current_maps()
    return maps.uid_inside(st.st_uid), maps.gid_inside(st.st_gid)


def keep_xattr(name: str) -> bool:
    """The extended attributes a layer carries: file capabilities and ``user.*``."""
    return name == "security.capability" or (name.startswith("user.")
                                             and not name.startswith("user.overlay."))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- hashing streams ----------------------------------------------------------------------

class HashingReader(io.RawIOBase):
    """Reads through ``raw`` while hashing and counting every byte read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.hash.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class HashingWriter(io.RawIOBase):
    """Hashes and counts what is written, passing it on to ``out`` when given."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


# -- directory -> tar ---------------------------------------------------------------------

def _xattrs(path: str | int) -> dict[str, bytes]:
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if keep_xattr(name):
            try:
                out[name] = os.getxattr(path, name)
            except OSError:
                continue
    return out


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = owner_ids(st)
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    info.size = 0
    return info


def write_tar(layer_dir: str, out: IO[bytes]) -> None:
    """Write the canonical tar of ``layer_dir`` to ``out`` (see the module docstring)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8") as tar:
        _tar_dir(tar, layer_dir, "", {})


def _tar_dir(tar: tarfile.TarFile, path: str, rel: str,
             links: dict[tuple[int, int], str]) -> None:
    entries = []
    with os.scandir(path) as it:
        for entry in it:
            entries.append((entry.name, entry.stat(follow_symlinks=False)))
    entries.sort()
    prefix = f"{rel}/" if rel else ""
    if rel and is_opaque(path):
        marker = _info(prefix + OPAQUE_MARKER, os.lstat(path), tarfile.REGTYPE)
        marker.mode, marker.uid, marker.gid = 0o644, 0, 0
        tar.addfile(marker)
    for name, st in entries:
        if is_whiteout(st):
            tar.addfile(_info(prefix + WHITEOUT_PREFIX + name, st, tarfile.REGTYPE))
    for name, st in entries:
        if is_whiteout(st):
            continue
        if name.startswith(WHITEOUT_PREFIX):
            raise ImageError(f"layer {path}: {name!r} starts with {WHITEOUT_PREFIX!r}, which a "
                             f"layer tar reserves for whiteouts; rename it")
        full = os.path.join(path, name)
        relname = prefix + name
        if stat.S_ISDIR(st.st_mode):
            info = _info(relname, st, tarfile.DIRTYPE)
            _add_xattrs(info, full)
            tar.addfile(info)
            _tar_dir(tar, full, relname, links)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                info = _info(relname, st, tarfile.LNKTYPE)
                info.linkname = links[key]
                tar.addfile(info)
                continue
            links[key] = relname
            info = _info(relname, st, tarfile.REGTYPE)
            info.size = st.st_size
            _add_xattrs(info, full)
            with open(full, "rb") as f:
                tar.addfile(info, f)
        elif stat.S_ISLNK(st.st_mode):
            info = _info(relname, st, tarfile.SYMTYPE)
            info.linkname = os.readlink(full)
            tar.addfile(info)
        elif stat.S_ISFIFO(st.st_mode):
            tar.addfile(_info(relname, st, tarfile.FIFOTYPE))
        elif stat.S_ISSOCK(st.st_mode):
            continue  # a tar cannot hold a socket; like docker, leave it out
        else:
            raise ImageError(f"layer {path}: {name!r} is a device node; a layer holds no "
                             f"devices (the box's /dev is made fresh); delete it first")


def _add_xattrs(info: tarfile.TarInfo, path: str) -> None:
    headers = dict(info.pax_headers)
    for name, value in _xattrs(path).items():
        headers[PAX_XATTR + name] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = headers


def diff_id(layer_dir: str) -> str:
    """``sha256:`` of the canonical tar of ``layer_dir``."""
    w = HashingWriter()
    write_tar(layer_dir, w)  # type: ignore[arg-type]
    return w.digest()


def write_blob(layer_dir: str, out: IO[bytes], compress: bool) -> tuple[str, str, int]:
    """Write the layer's tar (gzip'd when ``compress``) to ``out``.

    Returns ``(digest, diff_id, size)``: the digest and size of the bytes written, and the
    sha256 of the uncompressed tar.
    """
    outer = HashingWriter(out)
    if compress:
        # mtime=0 and no file name: the same tar always compresses to the same blob.
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0,
                           compresslevel=6) as gz:
            inner = HashingWriter(gz)  # type: ignore[arg-type]
            write_tar(layer_dir, inner)  # type: ignore[arg-type]
        return outer.digest(), inner.digest(), outer.size
    write_tar(layer_dir, outer)  # type: ignore[arg-type]
    return outer.digest(), outer.digest(), outer.size


# -- tar -> directory ---------------------------------------------------------------------

@dataclass
class Unpacked:
    digest: str      # sha256 of the bytes read (compressed if they were)
    diff_id: str     # sha256 of the uncompressed tar
    size: int        # bytes read
    compressed: bool


def open_layer_stream(raw: IO[bytes], source: str) -> tuple[HashingReader, IO[bytes], bool]:
    """Wrap ``raw`` for reading a layer: ``(outer hasher, tar stream, compressed)``."""
    outer = HashingReader(raw)
    buffered = io.BufferedReader(outer, CHUNK)
    head = buffered.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return outer, gzip.GzipFile(fileobj=buffered, mode="rb"), True  # type: ignore[return-value]
    if head.startswith(ZSTD_MAGIC):
        raise ImageError(f"{source}: a zstd-compressed layer; pytest-nsbox reads plain and "
                         f"gzip layers only (re-push it with gzip, e.g. `skopeo copy "
                         f"--dest-compress-format gzip ...`)")
    return outer, buffered, False


def unpack_tar(raw: IO[bytes], dest: str, source: str) -> Unpacked:
    """Unpack the layer tar read from ``raw`` into the empty directory ``dest``.

    ``raw`` may be gzip-compressed. Returns the digests of what was read; the caller checks
    them before the directory is used (and removes ``dest`` when anything is wrong).
    """
    outer, stream, compressed = open_layer_stream(raw, source)
    inner = HashingReader(stream)
    try:
        with tarfile.open(fileobj=inner, mode="r|", encoding="utf-8",
                          errors="surrogateescape") as tar:
            _Unpacker(dest, source).run(tar)
        inner.drain()
        outer.drain()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib_error()) as exc:
        raise ImageError(f"{source}: not a readable layer tar ({exc}); the file is damaged or "
                         f"not a tar") from None
    return Unpacked(digest=outer.digest(), diff_id=inner.digest(), size=outer.size,
                    compressed=compressed)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _clean_name(name: str, source: str, what: str = "entry") -> list[str]:
    """An entry name as path components below the layer root; refuses escapes."""
    if "\0" in name:
        raise ImageError(f"{source}: {what} {name!r} holds a NUL byte; refused")
    if name.startswith("/"):
        raise ImageError(f"{source}: {what} {name!r} is an absolute path; a layer tar holds "
                         f"paths relative to the root (e.g. 'etc/passwd'); refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{source}: {what} {name!r} climbs out with '..'; refused")
    return parts


class _Unpacker:
    def __init__(self, dest: str, source: str) -> None:
        self.dest = dest
        self.source = source
        self.dir_times: list[tuple[list[str], int]] = []
        self.opaque: list[list[str]] = []
        # ``.wh.`` whiteouts, applied after the last entry: path -> (uid, gid, mtime)
        self.whiteouts: dict[tuple[str, ...], tuple[int, int, int]] = {}

    def run(self, tar: tarfile.TarFile) -> None:
        root = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.root = root
        try:
            for member in tar:
                self._entry(tar, member)
            # Shortest first: a whiteout of "a" (nothing at "a" in this layer) makes "a" a
            # whiteout device before "a/.wh.b" could make it a directory.
            for wparts in sorted(self.whiteouts, key=lambda p: (len(p), p)):
                self._whiteout(list(wparts), *self.whiteouts[wparts])
            for parts in self.opaque:
                fd = self._reopen(parts)
                if fd >= 0:
                    try:
                        os.setxattr(fd, OPAQUE_XATTR, b"y")
                    finally:
                        os.close(fd)
            # Directory mtimes last (creating children changes them), deepest first.
            for parts, mtime in sorted(self.dir_times, key=lambda t: -len(t[0])):
                fd = self._reopen(parts)
                if fd >= 0:
                    try:
                        os.utime(fd, (mtime, mtime))
                    finally:
                        os.close(fd)
        finally:
            os.close(root)

    def _reopen(self, parts: list[str]) -> int:
        """The directory an earlier entry made, or -1 if a later entry replaced it."""
        try:
            return self._open_dir(parts, create=False, name="/".join(parts))
        except (FileNotFoundError, NotADirectoryError, ImageError):
            return -1

    def _refuse(self, name: str, problem: str) -> ImageError:
        return ImageError(f"{self.source}: entry {name!r}: {problem}; refused (nothing was "
                          f"imported)")

    def _open_dir(self, parts: list[str], create: bool, name: str, moot: bool = False) -> int:
        """An fd of directory ``parts`` below the root, never through a symlink.

        ``moot``: where this layer has something else than a directory on the way (a file,
        a symlink, a whiteout), return -1 instead of refusing ``name``.
        """
        def missing(fd: int, i: int) -> int:
            if not create:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                        "/".join(parts[:i + 1])) from None
            os.mkdir(parts[i], 0o755, dir_fd=fd)
            return _open_subdir(parts[i], fd)

        def blocked(fd: int, i: int) -> int:
            if moot:
                return -1
            st = os.lstat(parts[i], dir_fd=fd)
            where = "/".join(parts[:i + 1])
            if stat.S_ISLNK(st.st_mode):
                raise self._refuse(name, f"it would be written through the symlink "
                                         f"{where!r}") from None
            if is_whiteout(st) and create:
                # A directory of this layer replacing what an earlier whiteout device
                # hid: opaque, so the lower one's children stay hidden.
                os.unlink(parts[i], dir_fd=fd)
                os.mkdir(parts[i], 0o755, dir_fd=fd)
                self.opaque.append(parts[:i + 1])
                return _open_subdir(parts[i], fd)
            raise self._refuse(name, f"{where!r} is not a directory in this layer") from None

        return walk_dirs(self.root, parts, missing=missing, blocked=blocked)

    def _clear(self, dirfd: int, name: str) -> None:
        """Remove what an earlier entry put at ``name`` (a later entry replaces it)."""
        try:
            st = os.lstat(name, dir_fd=dirfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _clean_name(m.name, self.source)
        if not parts:
            if m.isdir():
                self._dir_attrs(self.root, m, [])
                return
            raise self._refuse(m.name, "names the layer root but is not a directory")
        *parent, base = parts
        if base == OPAQUE_MARKER:
            fd = self._open_dir(parent, create=True, name=m.name)
            os.close(fd)
            self.opaque.append(parent)
            return
        if base.startswith(WHITEOUT_PREFIX):
            target = base[len(WHITEOUT_PREFIX):]
            if target.startswith(WHITEOUT_PREFIX) or target in ("", ".", ".."):
                return  # aufs bookkeeping (.wh..wh.plnk, ...): nothing to apply
            # Applied after the last entry (see the module docstring), so that an entry of
            # this layer at the same path wins whether it comes before or after.
            self.whiteouts[(*parent, target)] = (m.uid, m.gid, int(m.mtime))
            return
        fd = self._open_dir(parent, create=True, name=m.name)
        try:
            if m.isdir():
                try:
                    st = os.lstat(base, dir_fd=fd)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(base, dir_fd=fd)
                        os.mkdir(base, 0o755, dir_fd=fd)
                        if is_whiteout(st):  # a directory over a whiteout device: opaque
                            self.opaque.append(parts)
                except FileNotFoundError:
                    os.mkdir(base, 0o755, dir_fd=fd)
                sub = _open_subdir(base, fd)
                try:
                    self._dir_attrs(sub, m, parts)
                finally:
                    os.close(sub)
            elif m.isreg():
                self._clear(fd, base)
                f = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                            | os.O_CLOEXEC, 0o600, dir_fd=fd)
                try:
                    src = tar.extractfile(m)
                    if src is not None:
                        while chunk := src.read(CHUNK):
                            _write_all(f, chunk)
                    chown(f, m.uid, m.gid)
                    os.fchmod(f, m.mode & 0o7777)
                    self._set_xattrs(f, m)
                    os.utime(f, (m.mtime, m.mtime))
                finally:
                    os.close(f)
            elif m.issym():
                self._clear(fd, base)
                os.symlink(m.linkname, base, dir_fd=fd)
                chown(base, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
                os.utime(base, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)
            elif m.islnk():
                link_parts = _clean_name(m.linkname, self.source,
                                         f"entry {m.name!r}: hardlink target")
                if not link_parts:
                    raise self._refuse(m.name, "a hardlink to the layer root")
                *tparent, tbase = link_parts
                try:
                    tfd = self._open_dir(tparent, create=False, name=m.name)
                except FileNotFoundError:
                    raise self._refuse(m.name, f"a hardlink to {m.linkname!r}, which is not an "
                                               f"earlier entry of this layer") from None
                try:
                    try:
                        tst = os.lstat(tbase, dir_fd=tfd)
                    except FileNotFoundError:
                        raise self._refuse(m.name, f"a hardlink to {m.linkname!r}, which is "
                                                   f"not an earlier entry of this layer") from None
                    if stat.S_ISDIR(tst.st_mode) or is_whiteout(tst):
                        raise self._refuse(m.name, f"a hardlink to {m.linkname!r}, which is a "
                                                   f"directory or a whiteout")
                    if (tparent, tbase) != (parent, base):
                        self._clear(fd, base)
                        os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=fd,
                                follow_symlinks=False)
                finally:
                    os.close(tfd)
            elif m.isfifo():
                self._clear(fd, base)
                os.mkfifo(base, 0o600, dir_fd=fd)
                chown(base, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
                os.chmod(base, m.mode & 0o7777, dir_fd=fd)
                os.utime(base, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)
            elif m.ischr() and m.devmajor == 0 and m.devminor == 0:
                self._clear(fd, base)  # an overlay-style whiteout written as such
                os.mknod(base, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=fd)
            elif m.ischr() or m.isblk():
                raise self._refuse(m.name, f"a device node ({m.devmajor}:{m.devminor}); a layer "
                                           f"may hold none but 0:0 whiteouts (a box gets a fresh "
                                           f"/dev)")
            else:
                raise self._refuse(m.name, f"an entry of tar type {m.type!r} that a layer "
                                           f"cannot hold")
        finally:
            os.close(fd)

    def _whiteout(self, parts: list[str], uid: int, gid: int, mtime: int) -> None:
        """Apply the ``.wh.`` whiteout of ``parts`` to the finished layer directory."""
        *parent, base = parts
        fd = self._open_dir(parent, create=True, name="/".join(parts), moot=True)
        if fd < 0:
            return  # below a file, link or whiteout of this layer: nothing more to hide
        try:
            try:
                st = os.lstat(base, dir_fd=fd)
            except FileNotFoundError:
                os.mknod(base, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=fd)
                chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)
                os.utime(base, (mtime, mtime), dir_fd=fd, follow_symlinks=False)
                return
            if stat.S_ISDIR(st.st_mode):
                # This layer's own directory replaces the lower one: its content stays,
                # the lower layers' children are hidden.
                self.opaque.append(parts)
            # A file, link or whiteout of this layer at the path hides the lower one itself.
        finally:
            os.close(fd)

    def _dir_attrs(self, fd: int, m: tarfile.TarInfo, parts: list[str]) -> None:
        chown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        self._set_xattrs(fd, m)
        self.dir_times.append((parts, int(m.mtime)))

    def _set_xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if key.startswith(PAX_XATTR):
                name = key[len(PAX_XATTR):]
                if keep_xattr(name):
                    try:
                        os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                        raise self._refuse(m.name, f"the image store's filesystem cannot hold "
                                                   f"its extended attribute {name} "
                                                   f"({os.strerror(exc.errno)}; tmpfs before "
                                                   f"Linux 6.6 holds no user.*): move the store "
                                                   f"with ini nsbox_store_dir or NSBOX_STORE"
                                           ) from None


def _open_subdir(name: str, dirfd: int) -> int:
    """Open directory ``name`` in ``dirfd``, never following a symlink."""
    return os.open(name, OPEN_DIR_NOFOLLOW, dir_fd=dirfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- directory -> directory ---------------------------------------------------------------

def copy_tree(src: str, dst: str, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy layer directory ``src`` into the empty directory ``dst``, as a layer.

    Keeps owners, modes, mtimes, hardlinks, symlinks, file capabilities and ``user.*``
    xattrs, whiteouts (made anew as 0:0 devices) and opaque markers; drops overlay's own
    bookkeeping xattrs and sockets. ``skip`` holds paths relative to ``src`` (``etc/hosts``)
    left out. Refuses device nodes and overlay redirects, which a layer cannot carry.
    """
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []
    _copy_dir(src, dst, "", skip, links, dirs)
    _copy_meta(src, dst, os.lstat(src), is_dir=True)
    for path, st in reversed(dirs):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = os.lstat(src)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _overlay_check(path: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        for prefix in _OVERLAY_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in _OVERLAY_MEANINGFUL:
                raise ImageError(f"{path}: carries the overlay attribute {name}, which a layer "
                                 f"cannot keep; mount overlays without redirect_dir/metacopy")


def _copy_meta(src: str, dst: str, st: os.stat_result, is_dir: bool) -> None:
    chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name, value in _xattrs(src).items():
            os.setxattr(dst, name, value)
        if is_dir and is_opaque(src):
            os.setxattr(dst, OPAQUE_XATTR, b"y")


def _copy_dir(src: str, dst: str, rel: str, skip: frozenset[str],
              links: dict[tuple[int, int], str], dirs: list[tuple[str, os.stat_result]]) -> None:
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        relname = f"{rel}/{entry.name}" if rel else entry.name
        if relname in skip:
            continue
        s = entry.path
        d = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if entry.name.startswith(WHITEOUT_PREFIX):
            _copy_marker(entry.name, st, dst)
            continue
        if is_whiteout(st):
            os.mknod(d, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            continue
        if stat.S_ISDIR(st.st_mode):
            _overlay_check(s)
            os.mkdir(d, 0o700)
            _copy_dir(s, d, relname, skip, links, dirs)
            _copy_meta(s, d, st, is_dir=True)
            dirs.append((d, st))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d, follow_symlinks=False)
                continue
            _overlay_check(s)
            _copy_file(s, d)
            _copy_meta(s, d, st, is_dir=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
            if st.st_nlink > 1:
                links[key] = d
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            _copy_meta(s, d, st, is_dir=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(d, 0o600)
            _copy_meta(s, d, st, is_dir=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISSOCK(st.st_mode):
            continue
        else:
            raise ImageError(f"{s}: a device node ({os.major(st.st_rdev)}:"
                             f"{os.minor(st.st_rdev)}); a layer holds none (a box gets a fresh "
                             f"/dev); delete it before committing")


def _copy_marker(name: str, st: os.stat_result, dst: str) -> None:
    """An entry named ``.wh.*`` in a directory being copied as a layer: the in-directory
    markers fuse-overlayfs (the rootless fallback) writes in its upper directory beside or
    instead of the kernel's (its ``set_fd_opaque`` and ``create_whiteout``):
    ``.wh..wh..opq`` marks the directory opaque (so does its xattr, which
    ``OPAQUE_XATTRS`` reads), a whiteout device named ``.wh..opq`` goes with it, and a
    file ``.wh.NAME`` (where it could not ``mknod``) is a whiteout of ``NAME``. Made
    into the overlay form (``OPAQUE_XATTR``, a 0:0 device)."""
    if name == OPAQUE_MARKER:
        os.setxattr(dst, OPAQUE_XATTR, b"y")
        return
    target = name[len(WHITEOUT_PREFIX):]
    if is_whiteout(st) or target.startswith(WHITEOUT_PREFIX) or not target:
        return
    path = os.path.join(dst, target)
    if not os.path.lexists(path):
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def _copy_file(src: str, dst: str) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            size = os.fstat(fin).st_size
            copied = 0
            while copied < size:
                n = os.sendfile(fout, fin, copied, min(size - copied, 1 << 30))
                if n == 0:
                    break
                copied += n
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def tree_size(path: str) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                continue
    return total
