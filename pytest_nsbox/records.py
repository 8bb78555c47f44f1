"""The box record, ``<run>/boxes/<id>/owner.json``: written, read, listed and checked for a
live owner here, and nowhere else (as crun's ``src/libcrun/status.c`` owns its state file).

A box writes its record once its init is up (``new_record`` + ``write``); ``gc``, ``ps``,
``enter`` and ``images prune`` read them (``scan_boxes``, ``read_record``). ``owner_lock``
is a file the owner holds an exclusive ``flock`` on for its whole life: the kernel drops the
lock when the owner dies, so whoever can take it knows the owner is gone (with no lock
file, the owner's pid and its start time must still name a live process). A kept box
(``--nsbox-keep``) moves to ``<run>/kept/<label>-<id>/`` with a ``kept`` entry
(``kept_entry``) in its record.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import NsboxError
from .kernel.fs import try_flock
from .kernel.proc import own_start_time, start_time
from .model.jsondata import DataError, from_json, to_json
from .state import StateDirs

if TYPE_CHECKING:
    from .model.image import Image
    from .model.spec import BoxSpec

#: The record's file name in a box directory.
RECORD = "owner.json"
#: A box directory without a record this old was abandoned half-created (a box writes it
#: once its init is up, at most ``runtime.box.START_TIMEOUT`` (30 s) after the mkdir).
HALF_CREATED_AGE = 60.0
#: A box's cgroup is ``nsbox-<id>``.
CGROUP_PREFIX = "nsbox-"
#: The ``kept`` entry's layout; a new one needs a new number.
KEPT_VERSION = 1
#: The label part of a kept directory's name: what a path and an overlay layer option can
#: hold without quoting (overlayfs separates layers with ``:`` and options with ``,``).
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]+")
LABEL_MAX = 100


class RecordError(NsboxError):
    """A box record (``owner.json``) that is not JSON or not of the record's shape; the
    message names the file and the field."""


@dataclass(frozen=True)
class BoxRecord:
    """A box's ``owner.json``.

    ``owner_pid``, ``owner_start`` (clock ticks since boot, ``/proc/<pid>/stat`` field 22)
    and ``owner_lock`` (a file its owner holds a ``flock`` on) say who owns it; ``pid`` is
    its init's host PID and ``cgroup`` its cgroup's name, for ``gc``; ``created`` is when it
    came up (seconds since the epoch); ``env`` and ``workdir`` are what its commands get by
    default (for ``enter``); ``kept`` is the entry of a kept box (``kept_entry``).
    Fields after ``owner_start`` have defaults: records written by older versions lack
    some of them (``owner_lock``, ``pid``, ``env``, ``workdir``, ``kept``).
    """

    id: str
    owner_pid: int
    owner_start: int | None
    owner_lock: str = ""
    pid: int | None = None
    cgroup: str = ""
    name: str = ""
    image: str = ""
    hostname: str = ""
    created: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    kept: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as written (a kept entry only when there is one)."""
        data: dict[str, Any] = to_json(self)
        if self.kept is None:
            del data["kept"]
        return data

    @classmethod
    def from_json(cls, data: Any, path: str) -> BoxRecord:
        """The record in JSON value ``data`` read from file ``path``; raises ``RecordError``
        naming ``path`` for an unknown or missing field or a value of the wrong type."""
        try:
            return from_json(cls, data, f"box record {path}")
        except DataError as exc:
            raise RecordError(str(exc)) from None


def new_record(*, box_id: str, owner_lock: str, pid: int, name: str, image: str,
               hostname: str, created: float, env: dict[str, str], workdir: str,
               kept: dict[str, Any] | None = None) -> BoxRecord:
    """The record of a box owned by this process: who owns it (pid, start time, lock), its
    init's host pid and cgroup for ``gc``, and for ``enter`` the environment and working
    directory its commands get by default; ``kept`` adds a kept box's entry."""
    return BoxRecord(id=box_id, owner_pid=os.getpid(), owner_start=own_start_time(),
                     owner_lock=owner_lock, pid=pid or None, cgroup=CGROUP_PREFIX + box_id,
                     name=name, image=image, hostname=hostname, created=created, env=env,
                     workdir=workdir, kept=kept)


def write(box_dir: str, record: BoxRecord) -> None:
    """Write ``record`` into box directory ``box_dir`` atomically (rename over the old)."""
    path = os.path.join(box_dir, RECORD)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record.to_json(), f)
    os.rename(path + ".tmp", path)


def read_record(path: str) -> BoxRecord | None:
    """The ``owner.json`` of box directory ``path``; None when there is none (yet).

    Raises ``RecordError`` naming the file when it cannot be read, is not JSON, or is not
    a box record (``BoxRecord.from_json``)."""
    file = os.path.join(path, RECORD)
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecordError(f"box record {file}: unreadable: {exc}") from None
    return BoxRecord.from_json(data, file)


def owner_alive(record: BoxRecord) -> bool:
    """Whether the process that owns a box (its ``owner.json`` record) is still alive."""
    if record.owner_lock:
        with try_flock(record.owner_lock) as taken:
            if taken is not None:
                return not taken
    if record.owner_pid <= 0:
        return False
    started = start_time(record.owner_pid)
    if started is None:
        return False
    return not (record.owner_start and record.owner_start != started)


def kept_entry(*, label: str, rootdir: str | None, store: str, image: Image, spec: BoxSpec,
               hostname: str) -> dict[str, Any]:
    """The ``kept`` entry of a box being kept: what a new box over its layers needs (the
    image's layer directories, bottom first, its run defaults, and the spec's hostname, env,
    user, binds and confinement); everything JSON, nothing of its processes."""
    return {
        "version": KEPT_VERSION,
        "at": time.time(),
        "label": label,
        "rootdir": rootdir,
        "store": store,
        "image": {"ref": image.ref, "id": image.id, "layers": list(image.layers),
                  "layer_dirs": list(image.layer_dirs), "env": dict(image.env),
                  "workdir": image.workdir, "from_host_os": image.from_host_os,
                  "config": image.config},
        "spec": {"image": spec.image, "hostname": hostname, "env": dict(spec.env),
                 "user": spec.user,
                 "binds": [[b.source, b.target, b.readonly] for b in spec.binds],
                 "network": "host" if spec.network == "host" else "none",
                 "privileged": spec.privileged, "cap_add": list(spec.cap_add),
                 "cap_drop": list(spec.cap_drop), "seccomp": spec.seccomp},
    }


def dir_name(label: str, box_id: str) -> str:
    """``<label>-<id>``, the label (e.g. a test's node id) made safe as above and cut to
    ``LABEL_MAX`` characters so the name stays under NAME_MAX (255)."""
    safe = _UNSAFE.sub("_", label).strip("._") or "box"
    return f"{safe[:LABEL_MAX]}-{box_id}"


def age_of(st: os.stat_result, now: float) -> float:
    """Seconds since ``st`` last changed (the younger of mtime and ctime)."""
    return now - max(st.st_mtime, st.st_ctime)


@dataclass
class BoxInfo:
    """One box directory and what its ``owner.json`` says.

    ``state`` is ``live`` (its owner lives), ``dead`` (its owner died: garbage), ``starting``
    (no owner.json yet, young), ``abandoned`` (no readable owner.json, old: garbage) or
    ``kept`` (under ``<run>/kept/``: kept for inspection by ``--nsbox-keep``). ``problem``
    says why an ``owner.json`` that is there was not read (``RecordError``).
    """

    id: str
    path: str
    record: BoxRecord | None
    state: str
    age: float
    problem: str = ""

    @property
    def name(self) -> str:
        return self.record.name if self.record else ""

    @property
    def image(self) -> str:
        return self.record.image if self.record else ""

    @property
    def hostname(self) -> str:
        return self.record.hostname if self.record else ""

    @property
    def env(self) -> dict[str, str]:
        """The environment the box's commands get by default (image ENV, marker env)."""
        return dict(self.record.env) if self.record else {}

    @property
    def workdir(self) -> str:
        """The box's working directory (the image's ``WORKDIR``), ``/`` if not recorded."""
        workdir = self.record.workdir if self.record else ""
        return workdir if workdir.startswith("/") else "/"

    @property
    def owner_pid(self) -> int | None:
        return self.record.owner_pid if self.record else None

    @property
    def owner_lock(self) -> str | None:
        return self.record.owner_lock or None if self.record else None

    @property
    def init_pid(self) -> int | None:
        """The host PID of the box's init, when ``owner.json`` records it."""
        pid = self.record.pid if self.record else None
        return pid if pid is not None and pid > 0 else None

    @property
    def cgroup(self) -> str:
        name = self.record.cgroup if self.record else ""
        if name.startswith(CGROUP_PREFIX) and "/" not in name:
            return name
        return CGROUP_PREFIX + self.id

    @property
    def created(self) -> float | None:
        return self.record.created if self.record else None

    @property
    def kept_entry(self) -> dict[str, Any] | None:
        """The ``kept`` entry of a kept box's record (``kept_entry``), if any."""
        return self.record.kept if self.record else None

    @property
    def upper(self) -> str:
        """The box's read-write layer."""
        return os.path.join(self.path, "upper")

    @property
    def garbage(self) -> bool:
        return self.state in ("dead", "abandoned")


def scan_boxes(dirs: StateDirs, *, kept: bool = False) -> list[BoxInfo]:
    """Every box directory under ``<run>/boxes/`` (and ``<run>/kept/`` with ``kept``)."""
    found: list[BoxInfo] = []
    now = time.time()
    tops = [(dirs.boxes, False)] + ([(dirs.kept, True)] if kept else [])
    for top, is_kept in tops:
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            try:
                record, problem = read_record(entry.path), ""
            except RecordError as exc:  # unreadable: as a box with no record
                record, problem = None, str(exc)
            box_id = record.id if record else ""
            if not box_id:
                # kept dirs are named <label>-<id>; box dirs are the id itself
                box_id = entry.name.rpartition("-")[2] if is_kept else entry.name
            if is_kept:
                state = "kept"
            elif record is None:
                state = "starting" if age_of(st, now) < HALF_CREATED_AGE else "abandoned"
            else:
                state = "live" if owner_alive(record) else "dead"
            created = record.created if record else None
            age = now - (created if created is not None else st.st_mtime)
            found.append(BoxInfo(box_id, entry.path, record, state, max(0.0, age), problem))
    return found


