"""``Box.commit()``: a new image whose top layer is the box's read-write layer.

The read-write (upper) directory is copied into the store while the box still runs (its
teardown deletes it), with deletions kept as whiteouts and replaced directories as opaque
ones. The init layer (``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``) is a lower
layer of its own and never part of it; a box's own writes to those three files are left
out too, as ``docker commit`` does.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

from ..errors import ImageError
from ..model.defaults import INIT_LAYER_RELPATHS
from ..images import layers as layerfs
from ..model.image import Image
from ..images.content import base_history, own_layers
from .owner import as_owner


def _empty(path: str) -> None:
    """Make ``path`` an empty directory again (a copy that stopped half-way)."""
    from ..kernel.fs import remove_tree

    remove_tree(path)
    os.mkdir(path, 0o755)


def commit_box(box: Any, tag: str | None = None) -> Image:
    store = box._engine.store
    image: Image = box.image
    upper = box.dirs.upper
    if getattr(box, "closed", False) or not os.path.isdir(upper):
        raise ImageError(f"box {box.name!r}: cannot commit a closed box; its read-write "
                         f"layer is gone (commit before the test ends)")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()
                            or any(c.isspace() for c in tag)):
        raise ImageError(f"commit(tag={tag!r}): not an image name; use e.g. 'myapp:v1'")
    with store.using():
        tmp = store.new_tmp("commit")
        try:
            # Rootless, files a box's non-root users made may be readable by its user
            # namespace only: the agent copies them then (owner.as_owner).
            as_owner(partial(layerfs.copy_tree, upper, tmp, skip=INIT_LAYER_RELPATHS),
                     f"box {box.name!r}: copying its read-write layer",
                     before_agent=partial(_empty, tmp))
        except BaseException:
            from ..kernel.fs import remove_tree

            remove_tree(tmp)
            raise
        created_by = f"nsbox commit of box {box.name}"
        lid = store.add_layer(tmp, created_by=created_by)
        ids = [*own_layers(image), lid]
        history = [*base_history(image),
                   {"created": store.layer_created(lid), "created_by": created_by}]
        config = store.make_config(parent=image, layer_ids=ids, env=dict(image.env),
                                   workdir=image.workdir, labels=dict(image.labels),
                                   history=history)
        made: Image = store.put_image(ref=tag, base="host" if image.from_host_os else None,
                               layer_ids=ids, config=config, tags=[tag] if tag else [])
        return made
