"""Kept boxes (``--nsbox-keep``): what is recorded when a box is kept, and a new box over it.

A kept box is ``<run>/kept/<label>-<id>/`` holding its read-write layer (``upper``), its
init layer and ``owner.json``, whose ``kept`` entry (``record``) says what a new box needs
to show the same files: the image's layer directories, bottom first, and its run defaults
(env, working directory, config), and the spec's hostname, env, user, binds and
confinement. ``python -m pytest_nsbox enter`` starts a new box whose lower layers are the
image's layers with the kept read-write layer on top (as ``Box.commit`` stacks it), under a
fresh read-write layer of its own: the kept layer is never written, and what the entered
command changes goes away with that box.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import NsboxError
from .records import KEPT_VERSION, BoxInfo, scan_boxes
from .model.spec import Bind, BoxSpec
from .state import StateDirs

if TYPE_CHECKING:
    from .model.image import Image
    from .images.store import ImageStore
    from .runtime.box import Box

#: The reference the entering process gives the kept image in its own store.
REF_PREFIX = "kept:"


class KeptError(NsboxError):
    """A kept box cannot be entered (no record, or its image's layers are gone)."""


def _entry(box: BoxInfo) -> dict[str, Any]:
    entry = box.kept_entry
    if not isinstance(entry, dict) or entry.get("version") != KEPT_VERSION:
        raise KeptError(
            f"box {box.id} ({box.name or '?'}) was kept without a record of its image (by an "
            f"older pytest-nsbox, or its owner.json is unreadable), so no box can be started "
            f"over it; its read-write layer is at {box.upper}")
    return entry


def image_for(store: ImageStore, box: BoxInfo) -> Image:
    """The kept box's image with its read-write layer on top, as an image of ``store``.

    The recorded layer directories are used while they all exist; else the image is looked
    up again by id (or by ref for the built-ins, which are rebuilt) and used when its layers
    are the same. Raises ``KeptError`` naming the missing layer otherwise.
    """
    from .model.image import Image

    entry = _entry(box)
    recorded: dict[str, Any] = entry["image"]
    layers = tuple(str(x) for x in recorded["layers"])
    dirs = tuple(str(x) for x in recorded["layer_dirs"])
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        found = _look_up(store, recorded, layers)
        if found is None:
            raise KeptError(
                f"box {box.id} ({box.name or '?'}): its image {recorded['ref']!r} "
                f"({recorded['id']}) is gone: layer {missing[0]} no longer exists (removed by "
                f"`images rm`/`prune`, or lost at a reboot); its read-write layer is at "
                f"{box.upper}")
        dirs = found.layer_dirs
    if not os.path.isdir(box.upper):
        raise KeptError(f"box {box.id}: its read-write layer {box.upper} is gone")
    return Image(ref=REF_PREFIX + box.id, id=str(recorded["id"]),
                 layers=(*layers, f"kept-{box.id}"), layer_dirs=(*dirs, box.upper),
                 env=dict(recorded.get("env") or {}), workdir=str(recorded.get("workdir") or "/"),
                 # records written before the rename name it host_root
                 from_host_os=bool(recorded.get("from_host_os", recorded.get("host_root"))),
                 config=recorded.get("config"),
                 store=store)


def _look_up(store: ImageStore, recorded: dict[str, Any],
             layers: tuple[str, ...]) -> Image | None:
    refs = [str(recorded["id"])]
    if recorded.get("ref") in ("host", "busybox", "scratch"):
        refs.insert(0, str(recorded["ref"]))
    for ref in refs:
        try:
            image = store.get(ref)
        except NsboxError:
            continue
        if image.layers == layers and all(os.path.isdir(d) for d in image.layer_dirs):
            return image
    return None


def layers_in_use(dirs: StateDirs) -> set[str]:
    """The layer ids the kept boxes under ``dirs.run`` stand on (``images prune`` keeps
    them, as ``docker image prune`` keeps the images of stopped containers)."""
    used: set[str] = set()
    for box in scan_boxes(dirs, kept=True):
        entry = box.kept_entry if box.state == "kept" else None
        image = entry.get("image") if isinstance(entry, dict) else None
        if isinstance(image, dict) and isinstance(image.get("layers"), list):
            used.update(str(layer) for layer in image["layers"])
    return used


def spec_keys(box: BoxInfo) -> dict[str, Any]:
    """The marker keys of the new box: the kept box's, without limits and private network."""
    keys = dict(_entry(box)["spec"])
    keys["image"] = REF_PREFIX + box.id
    keys["name"] = f"enter-{box.id}"
    keys["binds"] = [Bind(str(b[0]), str(b[1]), bool(b[2])) for b in keys.get("binds") or []]
    return {k: v for k, v in keys.items() if v is not None}


@contextmanager
def reopened(dirs: StateDirs, box: BoxInfo, cgroup_parent: str | None = None) -> Iterator[Box]:
    """A new running box over kept box ``box``'s layers, closed (and deleted) on exit.

    It is owned by this process; ``dirs.run`` is where it runs, the recorded store is
    where its image is looked up again if its layer directories are gone. Raises
    ``KeptError``, or the ``SpecError``/``BoxError`` of a box that cannot start.
    """
    from .runtime import engine as engine_mod
    from .runtime.box import Box

    entry = _entry(box)
    store_dir, rootdir = entry.get("store"), entry.get("rootdir")
    store_dir = store_dir if isinstance(store_dir, str) and store_dir else dirs.store
    rootdir = rootdir if isinstance(rootdir, str) and rootdir else None
    engine = engine_mod.Engine(dirs=StateDirs(store=store_dir, run=dirs.run),
                               cgroup_parent=cgroup_parent, rootdir=rootdir)
    image = image_for(engine.store, box)
    engine.store.resolvers.append(lambda ref: image if ref == image.ref else None)
    spec = BoxSpec.from_kwargs(spec_keys(box), source=f"kept box {box.id}")
    try:
        new = Box.from_spec(spec, engine=engine)
        try:
            yield new
        finally:
            new.close()
    finally:
        engine.release_owner_lock()
