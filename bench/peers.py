"""One box lifecycle per runtime, the same work for each.

The work (issue 6): a fresh overlay over the two bench layers, 64M memory (swap off) and
64 pids limits in a cgroup, PID/mount/UTS/IPC/network namespaces, ``/proc``, a tmpfs
``/dev``, run ``/bin/true``, then full teardown (umount, delete the upper layer, remove the
cgroup). ``lifecycle()`` does all of it once and returns the wall time in seconds.

- nsbox: ``Box(image=<the two layers>, memory="64M", pids=64)``, ``run(["/bin/true"])``,
  ``close()``: its own mount plan (which does more than the peers': devpts, shm, mqueue,
  read-only sysfs, masked paths) and its own init layer.
- crun, runc: an OCI bundle whose root is an overlay the bench mounts for the round;
  ``<runtime> run`` creates the cgroup (``cgroupsPath``), runs, waits and deletes.
- bwrap: Debian's 0.8 has no ``--overlay``, so the bench mounts the overlay and bwrap binds
  it as ``/``; it starts inside a cgroup the bench made (``sh -c 'echo $$ > ...; exec bwrap'``).
- unshare: ``unshare -pfmuin`` + ``sh`` + ``mount`` + ``chroot`` (util-linux), started the same way.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_nsbox.kernel.fs import remove_tree

from .workspace import PREFIX, PeerCgroup, RoundDirs, Workspace, mount_overlay, umount

MEMORY = 64 << 20
PIDS = 64
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class PeerFailed(Exception):
    """A peer could not do the lifecycle; the message is its first line of complaint."""


def _complaint(proc: subprocess.CompletedProcess[bytes], what: str) -> PeerFailed:
    lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
    return PeerFailed(f"{what} exited {proc.returncode}: {lines[-1] if lines else 'no message'}")


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


class Runtime:
    name = ""
    how = ""
    binary: str | None = None

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def missing(self) -> str | None:
        """None when this runtime can run here, else why not (``not installed``)."""
        if self.binary and shutil.which(self.binary) is None:
            return "not installed"
        return None

    def version(self) -> str:
        return "?"

    def setup(self) -> None:
        """Once, before the first round (untimed)."""

    def lifecycle(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Once, after the last round."""


# -- nsbox --------------------------------------------------------------------------------

@dataclass
class Marks:
    """One nsbox lifecycle's timeline, monotonic seconds (see ``Box.start_marks``)."""

    before: float
    start_marks: list[tuple[str, float]]
    started: float
    ran: float
    closed: float


class Nsbox(Runtime):
    name = "nsbox"
    how = "`Box(image, memory='64M', pids=64)`, `run(['/bin/true'])`, `close()`"

    def __init__(self, ws: Workspace, image: str, **keys: Any) -> None:
        super().__init__(ws)
        self.image = image
        self.keys = {"memory": "64M", "pids": 64, **keys}
        self.marks: list[Marks] = []

    def version(self) -> str:
        import pytest_nsbox

        return f"pytest-nsbox {pytest_nsbox.__version__}"

    def lifecycle(self) -> float:
        from pytest_nsbox.runtime.box import Box

        t0 = time.perf_counter()
        m0 = time.monotonic()
        box = Box(image=self.image, **self.keys)
        m1 = time.monotonic()
        try:
            result = box.run(["/bin/true"])
            m2 = time.monotonic()
        finally:
            box.close()
        m3 = time.monotonic()
        elapsed = time.perf_counter() - t0
        if result.returncode != 0:
            raise PeerFailed(f"/bin/true exited {result.returncode} in the box: "
                             f"{result.stderr.strip()[-200:]}")
        self.marks.append(Marks(m0, list(getattr(box, "start_marks", [])), m1, m2, m3))
        return elapsed


# -- OCI runtimes -------------------------------------------------------------------------

def oci_config(root: str, args: list[str], cgroups_path: str, hostname: str) -> dict[str, Any]:
    """The smallest config.json doing the bench's work (OCI runtime spec 1.0)."""
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": [f"PATH={PATH}"], "cwd": "/", "noNewPrivileges": True},
        "root": {"path": root, "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {
            "resources": {"memory": {"limit": MEMORY, "swap": MEMORY},
                          "pids": {"limit": PIDS}},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")],
        },
    }


class Oci(Runtime):
    """crun and runc: ``<binary> --root STATE run --bundle B ID``."""

    def setup(self) -> None:
        self.state = os.path.join(self.ws.fast, f"{self.name}-state")
        os.makedirs(self.state, 0o700, exist_ok=True)
        self.path = shutil.which(self.binary or self.name) or self.name

    def version(self) -> str:
        return _version([self.binary or self.name, "--version"])

    def _bundle(self, args: list[str], what: str) -> tuple[RoundDirs, str]:
        d = self.ws.round_dirs(what)
        mount_overlay(self.ws.layers, d.upper, d.work, d.merged)
        cid = os.path.basename(d.base)
        with open(os.path.join(d.base, "config.json"), "w", encoding="utf-8") as f:
            json.dump(oci_config(d.merged, args, "/" + cid, PREFIX), f)
        return d, cid

    def _cli(self, *args: str) -> list[str]:
        return [self.path, "--root", self.state, *args]

    def _forget(self, d: RoundDirs, cid: str) -> None:
        """Teardown after a failure: the container, the overlay, the directory."""
        subprocess.run(self._cli("delete", "-f", cid), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
        umount(d.merged)
        remove_tree(d.base)

    def lifecycle(self) -> float:
        t0 = time.perf_counter()
        d, cid = self._bundle(["/bin/true"], self.name)
        try:
            proc = subprocess.run(self._cli("run", "--bundle", d.base, cid),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=60, check=False)
        except BaseException:
            self._forget(d, cid)
            raise
        umount(d.merged)
        remove_tree(d.base)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            self._forget(d, cid)
            raise _complaint(proc, f"{self.name} run")
        return elapsed

    # A live container, for ``exec`` against ``Box.run``.
    def start_live(self) -> tuple[RoundDirs, str]:
        d, cid = self._bundle(["/bin/sleep", "3600"], f"{self.name}-live")
        undo = self.ws.on_close(lambda: self._forget(d, cid))
        # Not a pipe: the container keeps crun's stderr open, so EOF would never come.
        with open(os.path.join(d.base, "stderr"), "w+b") as err:
            proc = subprocess.run(self._cli("run", "-d", "--bundle", d.base, cid),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=60, check=False)
            err.seek(0)
            proc.stderr = err.read()
        if proc.returncode != 0:
            self.ws.forget(undo)
            self._forget(d, cid)
            raise _complaint(proc, f"{self.name} run -d")
        self._live_undo = undo
        return d, cid

    def exec_live(self, cid: str, argv: list[str]) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(self._cli("exec", cid, *argv), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise _complaint(proc, f"{self.name} exec")
        return elapsed

    def stop_live(self, d: RoundDirs, cid: str) -> None:
        self.ws.forget(self._live_undo)
        self._forget(d, cid)


class Crun(Oci):
    name = binary = "crun"
    how = "OCI bundle on a fresh overlay; `crun run` (cgroupfs, v1)"


class Runc(Oci):
    name = binary = "runc"
    how = "OCI bundle on a fresh overlay; `runc run` (cgroupfs, v1)"


# -- started inside a cgroup the bench makes ---------------------------------------------

class InCgroup(Runtime):
    """A runtime that makes no cgroup of its own: ``sh`` joins one, then execs it."""

    def command(self, d: RoundDirs) -> str:
        raise NotImplementedError

    def mounts_overlay(self) -> bool:
        return True

    def lifecycle(self) -> float:
        ws = self.ws
        t0 = time.perf_counter()
        d = ws.round_dirs(self.name)
        mounted = False
        cg: PeerCgroup | None = None
        try:
            if self.mounts_overlay():
                mount_overlay(ws.layers, d.upper, d.work, d.merged)
                mounted = True
            cg = PeerCgroup(os.path.basename(d.base), MEMORY, PIDS)
            join = "; ".join(f"echo $$ > {shlex.quote(p)}" for p in cg.procs_files)
            proc = subprocess.run(["/bin/sh", "-c", f"{join}; exec {self.command(d)}"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=60, check=False)
        finally:
            if mounted:
                umount(d.merged)
            remove_tree(d.base)
            if cg is not None:
                cg.destroy()
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise _complaint(proc, self.name)
        return elapsed


class Bwrap(InCgroup):
    name = "bwrap"
    binary = "bwrap"
    how = "overlay mounted by the bench, `--bind` as `/`; started in a cgroup via `sh`"

    def version(self) -> str:
        return _version(["bwrap", "--version"])

    def command(self, d: RoundDirs) -> str:
        return shlex.join(["bwrap", "--bind", d.merged, "/", "--unshare-pid", "--unshare-net",
                           "--unshare-ipc", "--unshare-uts", "--proc", "/proc", "--dev", "/dev",
                           "/bin/true"])


class Unshare(InCgroup):
    name = "unshare"
    binary = "unshare"
    how = "`unshare -pfmuin` + `sh`: `mount` overlay, proc, tmpfs; `chroot`; in a cgroup via `sh`"

    def missing(self) -> str | None:
        for tool in ("unshare", "mount", "chroot"):
            if shutil.which(tool) is None:
                return f"not installed ({tool})"
        return None

    def version(self) -> str:
        return _version(["unshare", "--version"])

    def mounts_overlay(self) -> bool:
        return False  # the peer mounts it, in the mount namespace it made

    def command(self, d: RoundDirs) -> str:
        lower = ":".join(reversed(self.ws.layers))
        m = shlex.quote(d.merged)
        opts = shlex.quote(f"lowerdir={lower},upperdir={d.upper},workdir={d.work}")
        inner = (f"mount -t overlay -o {opts} {PREFIX} {m} && mount -t proc proc {m}/proc"
                 f" && mount -t tmpfs -o mode=755 tmpfs {m}/dev && exec chroot {m} /bin/true")
        return f"unshare -pfmuin --propagation private sh -c {shlex.quote(inner)}"


PEERS: tuple[type[Runtime], ...] = (Crun, Runc, Bwrap, Unshare)
PEER_PACKAGES = ("crun", "runc", "bubblewrap", "util-linux")


@dataclass
class LifecycleResult:
    name: str
    how: str
    version: str = ""
    status: str = "ok"  # "ok", "not installed", "failed: ..."
    samples: list[float] = field(default_factory=list)  # milliseconds


def interleaved(runtimes: list[Runtime], rounds: int, warmup: int = 2,
                progress: Callable[[str], None] | None = None) -> dict[str, LifecycleResult]:
    """``rounds`` rounds; round r runs each runtime once, the order rotated by r.

    The first ``warmup`` rounds are not counted (page cache, lazy imports, first cgroup
    of a controller). A runtime that fails is reported with its reason and left out of
    later rounds; nsbox failing is raised.
    """
    results = {rt.name: LifecycleResult(rt.name, rt.how, rt.version()) for rt in runtimes}
    live = list(runtimes)
    for r in range(warmup + rounds):
        k = r % len(live) if live else 0
        for rt in live[k:] + live[:k]:
            try:
                elapsed = rt.lifecycle()
            except PeerFailed as exc:
                if rt.name == "nsbox":
                    raise
                results[rt.name].status = f"failed: {exc}"
                live.remove(rt)
                continue
            if r >= warmup:
                results[rt.name].samples.append(elapsed * 1000)
        if progress is not None and r >= warmup and (r + 1 - warmup) % 20 == 0:
            progress(f"lifecycle round {r + 1 - warmup}/{rounds}")
    return results
