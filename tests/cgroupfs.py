"""A fake cgroup v2 hierarchy: plain files in a directory, and the kernel's part of it.

The backend takes the root path and its ``mkdir``, ``rmdir`` and ``write`` functions, so
everything else it does (reading ``cgroup.controllers``, ``cgroup.procs``, ``cgroup.type``,
locking directories, recording changes) is the code that runs on cgroupfs. The kernel's
rules played here are those of kernel/cgroup/cgroup.c and Documentation/admin-guide/
cgroup-v2.rst:

- mkdir: the child gets ``cgroup.controllers`` = the parent's ``cgroup.subtree_control``
  and the interface files of those controllers; a child of a threaded cgroup is threaded,
  a child of a thread root is ``domain invalid``; the real root has no ``cgroup.type``,
  ``cgroup.freeze`` or ``cgroup.kill`` (``CFTYPE_NOT_ON_ROOT``).
- ``cgroup.subtree_control``: ``+c``/``-c`` tokens only (EINVAL otherwise); ``+c`` not in
  ``cgroup.controllers`` is ENOENT; in a threaded or ``domain invalid`` cgroup EOPNOTSUPP
  (``cgroup_vet_subtree_control_enable``); a domain controller in a non-root cgroup with
  processes EBUSY ("no internal process constraint"), a threaded one there makes it a
  thread root (``domain threaded``); ``-c`` while a child enables ``c`` is EBUSY.
- ``cgroup.procs``: one pid per write (EINVAL otherwise); a pid no cgroup lists is ESRCH;
  into a threaded / ``domain invalid`` cgroup EOPNOTSUPP, into a non-root cgroup with domain
  controllers enabled EBUSY (``cgroup_migrate_vet_dst``); the process leaves its old cgroup.
- rmdir: EBUSY while child cgroups or processes remain.

Every write is logged in ``writes`` as ``(path relative to the root, value)``; ``fail``
makes the next writes to a file fail with an errno, ``immovable`` pids refuse to move
(EACCES, as another user's process under a delegation boundary), ``deny_mkdir`` paths
refuse mkdir (EACCES, a cgroup not delegated to us).
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

THREADED = {"cpu", "cpuset", "perf_event", "pids"}
CORE_FILES = {
    "cgroup.procs": "",
    "cgroup.threads": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0\n",
    "cgroup.kill": "",
    "cgroup.subtree_control": "",
    "cgroup.type": "domain\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
ROOT_ONLY_ABSENT = ("cgroup.type", "cgroup.freeze", "cgroup.kill", "cgroup.events")
CONTROLLER_FILES = {
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "io": {"io.max": ""},
    "cpuset": {"cpuset.cpus": ""},
}


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class FakeCgroupfs:
    """A cgroup2 hierarchy at ``top`` (made here) whose root is the real root cgroup
    (``real_root``) or a cgroup-namespace root (a non-root cgroup: it has ``cgroup.type``
    and the no-internal-process rule applies to it). ``controllers`` are the root's
    ``cgroup.controllers``; ``omit`` interface files this kernel lacks."""

    def __init__(self, top: Path, controllers: str = "cpuset cpu io memory pids", *,
                 real_root: bool = True, enabled: str = "", procs: Iterable[int] = (),
                 omit: Iterable[str] = ()) -> None:
        self.root = top
        self.real_root = real_root
        self.omit = set(omit)
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[str, list[int]] = {}
        self.immovable: set[int] = set()
        self.deny_mkdir: set[str] = set()
        self.on_write: Callable[[str, str], None] | None = None
        top.mkdir(parents=True)
        files = dict(CORE_FILES, **{"cgroup.controllers": controllers + "\n"})
        if real_root:
            files = {k: v for k, v in files.items() if k not in ROOT_ONLY_ABSENT}
        for name, content in files.items():
            (top / name).write_text(content)
        for controller in controllers.split():
            if not real_root:
                self._add_files(top, controller)
        if enabled:
            (top / "cgroup.subtree_control").write_text(enabled + "\n")
        self.set_procs(top, procs)

    @classmethod
    def existing(cls, top: Path, *, real_root: bool = True) -> FakeCgroupfs:
        """The fake over a tree another ``FakeCgroupfs`` made (in another process)."""
        fs = cls.__new__(cls)
        fs.root, fs.real_root, fs.omit, fs.writes, fs.failures = top, real_root, set(), [], {}
        fs.immovable, fs.deny_mkdir, fs.on_write = set(), set(), None
        return fs

    # -- helpers for tests ---------------------------------------------------------------------

    def rel(self, path: str | Path) -> str:
        r = os.path.relpath(path, self.root)
        return "" if r == "." else r

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def procs(self, level: str | Path) -> list[int]:
        return [int(p) for p in Path(level, "cgroup.procs").read_text().split()]

    def set_procs(self, level: str | Path, pids: Iterable[int]) -> None:
        Path(level, "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        self._retype(Path(level))

    def subtree(self, level: str | Path) -> list[str]:
        return Path(level, "cgroup.subtree_control").read_text().split()

    def kind(self, level: str | Path) -> str | None:
        f = Path(level, "cgroup.type")
        return f.read_text().strip() if f.exists() else None

    def mkdirs(self, rel: str, enable: str = "") -> Path:
        """Make the cgroups of ``rel`` level by level, each parent first enabling
        ``enable`` (``"+memory +pids"``) for its child; returns the last."""
        level = self.root
        for part in rel.split("/"):
            if enable:
                self.write(str(level / "cgroup.subtree_control"), enable)
            level = level / part
            self.mkdir(str(level))
        return level

    def fail(self, rel_file: str, *codes: int) -> None:
        """The next writes to ``rel_file`` (relative to the root) fail with ``codes``."""
        self.failures.setdefault(rel_file, []).extend(codes)

    def writes_to(self, name: str) -> list[tuple[str, str]]:
        return [(p, v) for p, v in self.writes if os.path.basename(p) == name]

    # -- the kernel's part ---------------------------------------------------------------------

    def _is_root(self, level: Path) -> bool:
        """The real root cgroup, exempt from the no-internal-process rule (a namespace
        root is not: ``cgroup_is_mixable`` looks at the real parent)."""
        return self.real_root and level == self.root

    def _children(self, level: Path) -> list[Path]:
        return [c for c in level.iterdir() if c.is_dir()]

    def _add_files(self, level: Path, controller: str) -> None:
        for name, content in CONTROLLER_FILES.get(controller, {}).items():
            if name not in self.omit and not (level / name).exists():
                (level / name).write_text(content)

    def _remove_files(self, level: Path, controller: str) -> None:
        for name in CONTROLLER_FILES.get(controller, {}):
            (level / name).unlink(missing_ok=True)

    def _retype(self, level: Path) -> None:
        """A non-root domain cgroup with processes and threaded controllers enabled is a
        thread root (``cgroup_is_thread_root``), shown as ``domain threaded``."""
        kind = self.kind(level)
        if kind not in ("domain", "domain threaded"):
            return
        root_of_threads = bool(self.procs(level)) and bool(set(self.subtree(level)) & THREADED)
        (level / "cgroup.type").write_text(
            ("domain threaded" if root_of_threads else "domain") + "\n")

    def mkdir(self, path: str) -> None:
        p = Path(path)
        if path in self.deny_mkdir:
            raise _err(errno.EACCES, path)
        os.mkdir(path)  # EEXIST, ENOENT as the kernel gives them
        parent = p.parent
        enabled = self.subtree(parent)
        parent_kind = self.kind(parent)
        kind = ("threaded" if parent_kind == "threaded"
                else "domain invalid" if parent_kind == "domain threaded" else "domain")
        files = dict(CORE_FILES, **{"cgroup.controllers": " ".join(enabled) + "\n",
                                    "cgroup.type": kind + "\n"})
        for name, content in files.items():
            if name not in self.omit:
                (p / name).write_text(content)
        for controller in enabled:
            self._add_files(p, controller)

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        procs = p / "cgroup.procs"
        if self._children(p) or (procs.exists() and procs.read_text().strip()):
            raise _err(errno.EBUSY, path)
        for child in p.iterdir():
            child.unlink()
        p.rmdir()

    def write(self, path: str, value: str) -> None:
        rel = self.rel(path)
        self.writes.append((rel, value))
        if self.on_write is not None:
            self.on_write(rel, value)
        queued = self.failures.get(rel)
        if queued:
            raise _err(queued.pop(0), path)
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        name = p.name
        if name == "cgroup.subtree_control":
            self._subtree_control(p.parent, value)
        elif name == "cgroup.procs":
            self._move(p.parent, value)
        else:
            p.write_text(value)

    def _subtree_control(self, level: Path, value: str) -> None:
        tokens = value.split()
        if not tokens or any(t[:1] not in "+-" or len(t) < 2 for t in tokens):
            raise _err(errno.EINVAL, str(level / "cgroup.subtree_control"))
        available = (level / "cgroup.controllers").read_text().split()
        enabled = self.subtree(level)
        enable = [t[1:] for t in tokens if t[0] == "+"]
        disable = [t[1:] for t in tokens if t[0] == "-"]
        where = str(level / "cgroup.subtree_control")
        if any(c not in available for c in enable):
            raise _err(errno.ENOENT, where)
        kind = self.kind(level)
        if enable and kind in ("threaded", "domain invalid"):
            raise _err(errno.EOPNOTSUPP, where)
        domain = [c for c in enable if c not in THREADED]
        if domain and kind == "domain threaded":
            raise _err(errno.EOPNOTSUPP, where)
        if domain and not self._is_root(level) and self.procs(level):
            raise _err(errno.EBUSY, where)
        for c in disable:
            if any(c in self.subtree(child) for child in self._children(level)):
                raise _err(errno.EBUSY, where)
        now = [c for c in available if (c in enabled or c in enable) and c not in disable]
        (level / "cgroup.subtree_control").write_text(" ".join(now) + "\n")
        for child in self._children(level):
            (child / "cgroup.controllers").write_text(" ".join(now) + "\n")
            for c in enable:
                self._add_files(child, c)
            for c in disable:
                self._remove_files(child, c)
        self._retype(level)

    def _all_levels(self) -> list[Path]:
        return [Path(top) for top, _dirs, _files in os.walk(self.root)]

    def _move(self, dst: Path, value: str) -> None:
        where = str(dst / "cgroup.procs")
        if not value.strip().isdigit():
            raise _err(errno.EINVAL, where)
        pid = int(value)
        src = next((lv for lv in self._all_levels() if pid in self.procs(lv)), None)
        if src is None:
            raise _err(errno.ESRCH, where)
        if pid in self.immovable:
            raise _err(errno.EACCES, where)
        kind = self.kind(dst)
        if kind in ("threaded", "domain invalid"):
            raise _err(errno.EOPNOTSUPP, where)
        if not self._is_root(dst) and set(self.subtree(dst)) - THREADED:
            raise _err(errno.EBUSY, where)
        self.set_procs(src, [p for p in self.procs(src) if p != pid])
        self.set_procs(dst, self.procs(dst) + [pid])
