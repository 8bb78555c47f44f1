"""The box's root filesystem as data: an overlay, an init layer, and an ordered mount list.

Like bubblewrap's setup operations, the plan is a list of small steps (``protocol.MountOp``:
mount, bind, mknod, symlink, ...) that the box's init runs in order; building it here keeps
the init dumb and the layout testable without a kernel.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..model.image import Image
from ..model.spec import Bind
from ..kernel import libc
from .protocol import (BIND, DEVICE, MASK, MKDIR, MKNOD, MOUNT, READONLY, REMOUNT, SYMLINK,
                       BoxPlan, Confinement, MountOp)

_NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC

#: The kernel file systems made new in every box, by type: ``(source, flags, data)``
#: (runc's and Docker's defaults: ``oci.DefaultSpec``). ``tmpfs`` here is ``/dev/shm``'s.
FRESH_FILESYSTEMS: dict[str, tuple[str, int, str | None]] = {
    "proc": ("proc", _NOSUID_NODEV_NOEXEC, None),
    "sysfs": ("sysfs", _NOSUID_NODEV_NOEXEC, None),
    "devpts": ("devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    "mqueue": ("mqueue", _NOSUID_NODEV_NOEXEC, None),
    "tmpfs": ("shm", _NOSUID_NODEV_NOEXEC, "mode=1777"),
}
#: A box's ``/dev/shm``: Docker's ``--shm-size`` default, 64M.
SHM_SIZE = "65536k"


def fresh_mount(point: str, fstype: str, privileged: bool, size: str | None = None) -> MountOp:
    """The op that mounts a new ``fstype`` (a key of ``FRESH_FILESYSTEMS``) at ``point``;
    sysfs read-only unless ``privileged``; ``size``: a tmpfs's (None: the kernel's
    default, half of RAM)."""
    source, flags, data = FRESH_FILESYSTEMS[fstype]
    if fstype == "sysfs" and not privileged:
        flags |= libc.MS_RDONLY
    if size is not None:
        data = f"{data},size={size}"
    return MountOp(MOUNT, point, source=source, fstype=fstype, flags=flags, data=data)

# (name, major, minor): the devices every OCI runtime provides.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))
# This package's own folder: an editable install lives outside sys.prefix, and an isolated
# test's inner pytest must import the plugin.
PACKAGE_PARENT: str | None = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Docker's defaults (moby oci/defaults.go): hidden, and read-only, parts of /proc and /sys.
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class BoxDirs:
    """A box's host-side directories under the run dir."""

    base: str

    @property
    def upper(self) -> str:
        return os.path.join(self.base, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.base, "work")

    @property
    def init(self) -> str:
        return os.path.join(self.base, "init")

    @property
    def root(self) -> str:
        return os.path.join(self.base, "root")

    @property
    def host_top(self) -> str:
        """Rootless ``host`` boxes: the top level of the host's ``/`` (``split_host_root``)."""
        return os.path.join(self.base, "hosttop")

    def host_work(self, name: str) -> str:
        """The work directory of the overlay a rootless ``host`` box mounts on ``/<name>``."""
        return os.path.join(self.base, f"work-{name}")


#: The host's root as an image's bottom layer (images of ``host``).
HOST_ROOT = "/"
#: Host directories that are mount points in every box, never overlays.
_MOUNTED_IN_BOX = frozenset({"proc", "sys", "dev"})


@dataclass(frozen=True)
class HostRoot:
    """How a rootless box shows the host's ``/`` (``split_host_root``): ``overlays``, the
    host directories mounted as overlays of their own, each ``(name, lower layers bottom
    first)``; ``binds``, the ones bound read-only instead (mounts below them)."""

    overlays: tuple[tuple[str, tuple[str, ...]], ...]
    binds: tuple[str, ...]


def split_host_root(layers: list[str], mounts: list[str] | None = None,
                    root: str = HOST_ROOT) -> HostRoot:
    """What replaces the host's ``/`` in a rootless box's overlay, whose layers
    (bottom first, ``/`` the bottom one) are ``layers``.

    overlayfs clones each lower layer as a private mount, and in a user namespace it may
    not clone one with mounts below it: they are locked there (mount_namespaces(7), "the
    mounts ... are locked"; kernel ``clone_private_mount``: ``has_locked_children``, which
    the kernel logs as "overlayfs: failed to clone lowerpath"). The host's ``/`` always has
    some (``/proc``, ``/dev``, ...). So a rootless box's bottom layer is instead
    ``BoxDirs.host_top`` (``write_host_top``: the top level of ``/``), and each host OS
    directory (``builtin.HOST_OS_DIRS`` less ``/proc``, ``/sys``, ``/dev``) on the root
    filesystem gets an overlay of its own at ``/<name>``: its lower layers are the host's
    ``/<name>`` and each layer's ``<name>`` above it (a layer where ``<name>`` is opaque,
    a file or a whiteout hides what is below, as overlayfs would), its upper directory the
    box's ``upper/<name>``, so ``diff`` and ``commit`` read the same read-write layer as
    ever. A directory that has mounts below it (``mounts``: mount points, from
    mountinfo) is bound read-only instead, as bubblewrap's ``--ro-bind`` would.
    """
    from ..images import builtin
    from ..overlay.view import is_opaque

    if mounts is None:
        from ..kernel import mountinfo

        mounts = [m.point for m in mountinfo.read()]
    above = [layer for layer in layers if layer != root]
    overlays: list[tuple[str, tuple[str, ...]]] = []
    binds: list[str] = []
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False)
                       and e.name in builtin.HOST_OS_DIRS and e.name not in _MOUNTED_IN_BOX)
    for name in names:
        host = os.path.join(root, name)
        if any(point.startswith(host.rstrip("/") + "/") for point in mounts):
            binds.append(name)
            continue
        lowers: list[str] = [host]
        for layer in above:
            path = os.path.join(layer, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                lowers = [path] if is_opaque(path) else [*lowers, path]
            else:  # a file, a link or a whiteout replaces the host's directory here
                lowers = []
        if lowers and lowers[0] == host:
            overlays.append((name, tuple(lowers)))
    return HostRoot(tuple(overlays), tuple(binds))


def write_host_top(dirs: BoxDirs, host: HostRoot, root: str = HOST_ROOT) -> None:
    """``BoxDirs.host_top``: the host's top-level symlinks (``/bin -> usr/bin``) and an
    empty directory for each of its directories (what shows there comes from the mask
    layer, an overlay or a bind: ``split_host_root``); and the upper directory of each
    overlay, with the host directory's mode."""
    top = dirs.host_top
    os.mkdir(top, 0o755)
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), os.path.join(top, entry.name))
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(os.path.join(top, entry.name), 0o755)
    for name, _lowers in host.overlays:
        upper = os.path.join(dirs.upper, name)
        os.mkdir(upper)
        os.chmod(upper, stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode))
        os.mkdir(dirs.host_work(name), 0o755)


def host_root_ops(dirs: BoxDirs, host: HostRoot, privileged: bool) -> list[MountOp]:
    """The mounts that show the host's OS directories in a rootless box
    (``split_host_root``), run right after its root overlay."""
    ops = [MountOp(MOUNT, f"/{name}", source="nsbox", fstype="overlay",
                   flags=0 if privileged else libc.MS_NODEV,
                   data=overlay_options(list(lowers), os.path.join(dirs.upper, name),
                                        dirs.host_work(name), userxattr=True))
           for name, lowers in host.overlays]
    ops += [MountOp(BIND, f"/{name}", source=f"{HOST_ROOT}{name}", flags=libc.MS_RDONLY)
            for name in host.binds]
    return ops


def overlay_options(lower_bottom_first: list[str], upper: str, work: str,
                    userxattr: bool = False) -> str:
    """The overlay mount's option string. ``userxattr``: for a mount in a user namespace
    (rootless): overlayfs keeps its opaque, whiteout and copy-up markers in ``user.overlay.*``
    instead of ``trusted.overlay.*`` (Linux 5.11, overlayfs.rst "Non-standard behavior";
    containerd and moby ``overlayutils.NeedsUserXAttr``), which also turns off
    ``redirect_dir`` and ``metacopy``. Raises ``ValueError`` for a path holding ``,``,
    ``:`` or ``\\``."""
    for path in [*lower_bottom_first, upper, work]:
        if any(c in path for c in ",:\\\n"):
            raise ValueError(f"overlay layer path {path!r} holds ',', ':' or '\\'")
    lower = ":".join(reversed(lower_bottom_first))
    return (f"lowerdir={lower},upperdir={upper},workdir={work}"
            + (",userxattr" if userxattr else ""))


def host_binds(rootdir: str | None) -> list[Bind]:
    """What a ``host`` image box sees of the running test, as read-only binds at their own
    paths (sorted by path; a path inside another bound one is left out).

    - The running Python (``sys.prefix``, ``sys.base_prefix``) and this package's folder are
      bound only where the host image does not show them already (``builtin.host_shows``):
      under a hidden or fresh directory (``/tmp``, ``/root``, ``/home``, ``/work``, ...) or
      on a mount of their own. Where the image shows them (Debian's ``/usr/bin/python3`` and
      venvs made from it have ``/usr``; a Python built into ``/usr/local``; a venv in
      ``/opt``) they stay copy-on-write like the rest of the OS: a read-only ``/usr`` would
      send ``pip install`` in a ``FROM host`` step to ``/root/.local``, and no test could
      write under ``/usr``, where in Docker every image directory is writable.
    - The pytest ``rootdir`` is bound read-only (CONTRACT.md) wherever it is, unless it is
      ``/``, a top-level OS directory (``builtin.HOST_OS_DIRS``), or holds one of the
      Python folders left copy-on-write: binding it would make the OS read-only again.
    """
    import sys

    from ..images import builtin

    _key, masked = builtin.host_mask_key("/")
    python = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, PACKAGE_PARENT) if p}
    python = {p for p in python if os.path.isdir(p)}
    cow = {p for p in python if builtin.host_shows(p, masked)}
    paths = python - cow
    if rootdir:
        root = os.path.realpath(rootdir)
        os_dir = root == "/" or root.count("/") == 1 and root[1:] in builtin.HOST_OS_DIRS
        if os.path.isdir(root) and not os_dir and not any(_within(p, root) for p in cow):
            paths.add(root)
    keep = sorted(p for p in paths if not any(p != q and _within(p, q) for q in paths))
    return [Bind(source=p, target=p, readonly=True) for p in keep]


def _within(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both resolved and absolute)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def hosts_file(hostname: str, extra: list[tuple[str, str]] | None = None) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"127.0.1.1\t{hostname}"]
    lines += [f"{ip}\t{name}" for ip, name in extra or []]
    return "\n".join(lines) + "\n"


def write_init_layer(dirs: BoxDirs, hostname: str, hosts: str, binds: list[Bind]) -> None:
    """The never-committed layer: name files, and mount points the image may lack."""
    init = dirs.init
    os.makedirs(os.path.join(init, "etc"), 0o755)
    try:
        with open("/etc/resolv.conf", "rb") as f:
            resolv = f.read()
    except OSError:
        resolv = b""
    for rel, data in (("etc/hostname", (hostname + "\n").encode()), ("etc/hosts", hosts.encode()),
                      ("etc/resolv.conf", resolv)):
        with open(os.path.join(init, rel), "wb") as f:
            f.write(data)
    for d in ("proc", "dev", "sys"):
        os.mkdir(os.path.join(init, d), 0o755)
    for bind in binds:
        target = os.path.join(init, bind.target.lstrip("/"))
        if os.path.isdir(bind.source):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            if not os.path.exists(target):
                with open(target, "wb"):
                    pass


def mount_ops(binds: list[Bind], privileged: bool = False, rootless: bool = False,
              host_network: bool = False) -> list[MountOp]:
    """The ordered steps that build a box's ``/proc``, ``/dev`` and ``/sys`` and add
    ``binds`` (parents before children), as bubblewrap's setup op list; unless
    ``privileged``, ``/dev`` read-only and Docker's masked and read-only paths.

    ``rootless`` (the box runs in a user namespace of a normal user): the device nodes are
    the host's, bound onto empty files (``device`` ops), since ``mknod`` of a device needs
    ``CAP_MKNOD`` in the initial user namespace (bubblewrap ``SETUP_MOUNT_DEV`` binds them
    the same way); with ``host_network`` too, ``/sys`` is the host's bound read-only, since
    sysfs may only be mounted where the user namespace owns the network namespace (as
    rootless podman binds it for ``--network=host``).
    """
    ops: list[MountOp] = [
        fresh_mount("/proc", "proc", privileged),
        MountOp(MOUNT, "/dev", source="tmpfs", fstype="tmpfs",
                flags=libc.MS_NOSUID | libc.MS_STRICTATIME, data="mode=755,size=65536k"),
    ]
    for name, major, minor in DEVICES:
        if rootless:
            ops.append(MountOp(DEVICE, f"/dev/{name}", source=f"/dev/{name}"))
        else:
            ops.append(MountOp(MKNOD, f"/dev/{name}", mode=0o20666, major=major, minor=minor))
    for name, content in DEV_LINKS:
        ops.append(MountOp(SYMLINK, f"/dev/{name}", source=content))
    for name, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o755)):
        ops.append(MountOp(MKDIR, f"/dev/{name}", mode=mode))
    ops += [fresh_mount("/dev/pts", "devpts", privileged),
            fresh_mount("/dev/shm", "tmpfs", privileged, size=SHM_SIZE),
            fresh_mount("/dev/mqueue", "mqueue", privileged)]
    if rootless and host_network:
        ops.append(MountOp(BIND, "/sys", source="/sys", flags=libc.MS_RDONLY))
    else:
        ops.append(fresh_mount("/sys", "sysfs", privileged))
    if not privileged:
        # Device nodes the box makes are inert: the root is nodev and /dev read-only.
        ops.append(MountOp(REMOUNT, "/dev", flags=libc.MS_RDONLY | libc.MS_NOSUID))
        ops += [MountOp(MASK, p, allow_missing=True) for p in MASKED_PATHS]
        ops += [MountOp(READONLY, p, allow_missing=True) for p in READONLY_PATHS]
    for bind in sorted(binds, key=lambda b: b.target.count("/")):
        ops.append(MountOp(BIND, bind.target, source=bind.source,
                           flags=libc.MS_RDONLY if bind.readonly else 0))
    return ops


def build_plan(*, box_id: str, hostname: str, image: Image, dirs: BoxDirs, binds: list[Bind],
               cgroup_procs: list[str], network: str, privileged: bool = False,
               caps: list[int] | None = None, seccomp: bool = True,
               rootless: bool = False, host_root: HostRoot | None = None,
               overlay_helper: str | None = None) -> BoxPlan:
    """Everything the box's init needs (``protocol.BoxPlan``).

    ``caps`` are the capabilities its commands keep (None: all, for ``privileged``);
    ``seccomp`` installs the default filter before each command's exec; ``rootless``: the
    box runs in its owner's user namespace (overlay with ``userxattr``, the host's device
    nodes: ``overlay_options``, ``mount_ops``); ``host_root``: a rootless box of a ``host``
    image, whose ``/`` layer is ``dirs.host_top`` and overlays of its own
    (``split_host_root``, written by ``write_host_top``); ``overlay_helper``: the program
    that mounts the root instead of the kernel (``kernel.userns.overlay_helper``:
    fuse-overlayfs on kernels before 5.11, which takes the host's ``/`` as a layer as it
    is). Raises ``ValueError`` for a layer path overlayfs cannot take
    (``overlay_options``).
    """
    namespaces = ["mnt", "uts", "ipc", "cgroup"]
    if network != "host":
        namespaces.append("net")
    layers = [*image.layer_dirs, dirs.init]
    first: list[MountOp] = []
    if host_root is not None:
        layers = [dirs.host_top if layer == HOST_ROOT else layer for layer in layers]
        first = host_root_ops(dirs, host_root, privileged)
    return BoxPlan(
        box_id=box_id,
        hostname=hostname,
        namespaces=tuple(namespaces),
        cgroup_procs=tuple(cgroup_procs),
        root=dirs.root,
        overlay=overlay_options(layers, dirs.upper, dirs.work,
                                userxattr=rootless and overlay_helper is None),
        overlay_helper=overlay_helper,
        overlay_flags=0 if privileged else libc.MS_NODEV,
        ops=tuple(first + mount_ops(binds, privileged, rootless,
                                    host_network=network == "host")),
        trace_ops=bool(os.environ.get("NSBOX_TRACE_OPS")),
        confine=Confinement(caps=None if caps is None else tuple(caps),
                            seccomp=seccomp and not privileged, no_new_privs=not privileged),
    )
