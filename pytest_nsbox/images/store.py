"""The image store: content-addressed layer directories shared by every pytest process.

A layer is built in a private temporary directory and renamed into place under a file
lock, so concurrent processes (xdist workers) build it once and a crash never leaves a
half-written layer where a box could use it.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from filelock import FileLock

from ..errors import ImageError
from . import builtin
from .image import Image
from ..state import StateDirs, remove_tree

LOCK_TIMEOUT = 600.0


class ImageStore:
    """Resolves references to ``Image`` objects, building built-in layers on first use."""

    def __init__(self, dirs: StateDirs) -> None:
        self.dirs = dirs
        self._cache: dict[str, Image] = {}
        # Asked in order for references the store does not know (the plugin adds the
        # ``pytest_nsbox_resolve_image`` hook here).
        self.resolvers: list[Callable[[str], Image | None]] = []

    def get(self, ref: str) -> Image:
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(f"image {ref!r}: not an image reference; use e.g. 'busybox'")
        image = self._cache.get(ref)
        if image is None:
            image = self._resolve(ref)
            self._cache[ref] = image
        return image

    def _resolve(self, ref: str) -> Image:
        if ref == "host":
            return self._host()
        if ref == "busybox":
            return self._busybox()
        if ref == "scratch":
            layer = self.layer("scratch-v1", lambda d: None)
            return Image(ref="scratch", id="sha256:" + "0" * 64, layers=("scratch-v1",),
                         layer_dirs=(layer,))
        for resolve in self.resolvers:
            image = resolve(ref)
            if image is not None:
                if not isinstance(image, Image):
                    raise ImageError(f"image {ref!r}: a resolver returned {image!r}, "
                                     f"not an Image")
                return image
        raise ImageError(f"image {ref!r}: unknown; the built-in images are 'host', 'busybox' "
                         f"and 'scratch'")

    def _busybox(self) -> Image:
        binary = builtin.find_busybox()
        key = builtin.busybox_key(binary)
        layer = self.layer(key, lambda d: builtin.build_busybox(d, binary))
        return Image(ref="busybox", id="sha256:" + key, layers=(key,), layer_dirs=(layer,),
                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def _host(self) -> Image:
        key, masked = builtin.host_mask_key("/")
        # The mask must not live on the host root's filesystem: overlayfs refuses a lower
        # layer below another lower layer of the same filesystem ("overlapping lowerdir").
        layer = self.layer(key, lambda d: builtin.build_host_mask(d, masked), volatile=True)
        return Image(ref="host", id="sha256:" + key, layers=("host", key),
                     layer_dirs=("/", layer), host_root=True,
                     env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})

    def layer(self, key: str, build: Callable[[str], None], *, volatile: bool = False) -> str:
        """The directory of layer ``key``, built once by ``build(tmpdir)`` if missing."""
        base = self.dirs.run if volatile else self.dirs.store
        final = os.path.join(base, "layers", key)
        if os.path.isdir(final):
            return final
        os.makedirs(os.path.join(base, "layers"), exist_ok=True)
        os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
        os.makedirs(self.dirs.locks, exist_ok=True)
        with FileLock(os.path.join(self.dirs.locks, f"layer-{key}.lock"), timeout=LOCK_TIMEOUT):
            if os.path.isdir(final):
                return final
            tmp = os.path.join(base, "tmp", f"{key}.{secrets.token_hex(4)}")
            os.mkdir(tmp, 0o755)
            try:
                build(tmp)
                os.rename(tmp, final)
            except BaseException:
                remove_tree(tmp)
                raise
        return final

    def remove_layer(self, key: str) -> None:
        for base in (self.dirs.store, self.dirs.run):
            path = os.path.join(base, "layers", key)
            if os.path.isdir(path):
                remove_tree(path)
