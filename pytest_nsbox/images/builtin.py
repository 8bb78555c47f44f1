"""The built-in images: ``host``, ``busybox`` and ``scratch``; nothing is downloaded.

Each builder fills an empty directory that the store then renames into place, so a
half-built layer is never seen.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable

from ..errors import ImageError
from ..kernel import userns

BUSYBOX_FIX = ("install the statically linked busybox (Debian/Ubuntu: "
               "apt-get install busybox-static; Fedora: dnf install busybox; "
               "Alpine: apk add busybox-static)")

# Top-level host directories that hold the OS; everything else at the top of the host's
# root (home directories, /work, /mnt, ...) is hidden by an opaque empty directory.
HOST_OS_DIRS = frozenset({"bin", "boot", "etc", "lib", "lib32", "lib64", "libx32", "opt",
                          "sbin", "srv", "usr", "var", "proc", "sys", "dev"})
# Fresh and empty in every host box, as CONTRACT.md promises.
HOST_FRESH_DIRS = ("tmp", "run", "root", "home", "var/tmp")
OPAQUE_XATTR = userns.overlay_xattr("opaque")

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n"


def find_busybox() -> str:
    """A statically linked busybox on this host, or an ImageError saying what to install."""
    candidates = [os.environ.get("NSBOX_BUSYBOX"), shutil.which("busybox"),
                  "/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"]
    seen_dynamic = None
    for path in candidates:
        if not path or not os.path.isfile(path):
            continue
        real = os.path.realpath(path)
        if _is_static_elf(real):
            return real
        seen_dynamic = real
    if seen_dynamic:
        raise ImageError(f"image 'busybox': {seen_dynamic} is dynamically linked and cannot run "
                         f"alone in a box; {BUSYBOX_FIX}")
    raise ImageError(f"image 'busybox': no busybox binary on this host; {BUSYBOX_FIX}")


def _is_static_elf(path: str) -> bool:
    """True when the ELF file has no PT_INTERP (needs no dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            endian = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
        types = [struct.unpack_from(endian + "I", table, i * phentsize)[0] for i in range(phnum)]
    except (OSError, struct.error):  # unreadable or truncated: not something we can run
        return False
    return bool(types) and 3 not in types  # 3 = PT_INTERP


def busybox_key(busybox: str) -> str:
    """Cache key of the busybox layer: the binary's content and our layout version."""
    h = hashlib.sha256(b"nsbox-busybox-layer-v1\0")
    with open(busybox, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_busybox(dest: str, busybox: str) -> None:
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             timeout=30, check=False)
    if applets.returncode != 0:
        raise ImageError(f"image 'busybox': `{busybox} --list-full` failed "
                         f"({applets.stderr.strip()}); {BUSYBOX_FIX}")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root",
              "var", "home"):
        os.makedirs(os.path.join(dest, d), mode=0o755, exist_ok=True)
    os.mkdir(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    shutil.copy2(busybox, os.path.join(dest, "bin/busybox"))
    for rel in applets.stdout.split():
        rel = rel.strip("/")
        if not rel or ".." in rel.split("/") or rel == "bin/busybox":
            continue
        link = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    _write(os.path.join(dest, "etc/passwd"), PASSWD, 0o644)
    _write(os.path.join(dest, "etc/group"), GROUP, 0o644)


def host_mask_key(root: str = "/") -> tuple[str, list[str]]:
    """The host directories a host box must not see, and a key naming that set."""
    # Real directories only (a symlink such as usrmerge's /bin -> usr/bin is not one); the
    # entries' types come with the listing, so this costs one syscall, not two per entry.
    with os.scandir(root) as entries:
        hidden = sorted(e.name for e in entries
                        if e.name not in HOST_OS_DIRS and e.is_dir(follow_symlinks=False))
    masked = sorted(set(hidden) | set(HOST_FRESH_DIRS))
    key = hashlib.sha256(("nsbox-host-mask-v1\0" + "\0".join(masked)).encode()).hexdigest()
    return key, masked


def host_shows(path: str, masked: Iterable[str]) -> bool:
    """Whether a ``host`` image box sees host directory ``path`` as it is, copy-on-write.

    ``path`` is absolute and resolved (``os.path.realpath``); ``masked`` is what
    ``host_mask_key`` hides. The image's bottom layer is the host's ``/`` as overlayfs
    sees it: the root mount alone. So ``path`` shows when no masked directory holds it and
    it lies on the root mount (a directory on a mount of its own, e.g. a separate
    ``/opt`` filesystem or a bind mount, looks empty in the box). ``/`` itself shows.
    """
    rel = path.strip("/")
    if not rel:
        return True
    if any(rel == m or rel.startswith(m + "/") for m in masked):
        return False
    here, root = _mount_id(path), _mount_id("/")
    return here is not None and here == root


def _mount_id(path: str) -> int | None:
    """The id of the mount ``path`` is on (``mnt_id`` of /proc/self/fdinfo, proc(5)), or
    None when it cannot be opened."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(info, 4096)
        finally:
            os.close(info)
    except OSError:
        return None
    finally:
        os.close(fd)
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key == b"mnt_id":
            return int(value)
    return None


def build_host_mask(dest: str, masked: list[str]) -> None:
    """Opaque directories over the host's root: fresh /tmp, /root, ..., nothing personal."""
    for rel in masked:
        path = os.path.join(dest, rel)
        os.makedirs(path, exist_ok=True)
        mode = 0o1777 if rel in ("tmp", "var/tmp") else (0o700 if rel == "root" else 0o755)
        os.chmod(path, mode)
        os.setxattr(path, OPAQUE_XATTR, b"y")


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
