"""What a box runs: an ordered stack of read-only layer directories plus run defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Image:
    """An image in the store. ``layers`` are layer ids bottom first (CONTRACT.md).

    ``ref`` is the reference it was resolved from (``"busybox"``, ``"app:1"``,
    ``"oci:dir:tag"``, an id). ``id`` is ``sha256:<64 hex>``: for a stored image the digest
    of its OCI config (OCI image spec "ImageID"; one based on ``host`` hashes a marker with
    its config), for a built-in a key of its content.
    ``layers`` are, for stored layers, their ``diff_id`` hex (the sha256 of the
    uncompressed layer tar, OCI image spec "Layer DiffID"); the built-ins use their own
    keys. ``layer_dirs`` are the host directories overlayfs stacks, bottom first. ``env``
    (from the config's ``Env``) and ``workdir`` (``WorkingDir``, default ``/``) are every
    command's defaults; ``labels`` its ``Labels``. ``from_host_os``
    marks images based on the built-in ``host`` image, whose bottom layer is the host's own
    ``/``: a box of it also gets the pytest rootdir and the running Python bound in
    read-only. ``config`` is the image's OCI configuration (``None`` for the built-ins),
    ``history`` its ``created_by`` records, bottom first.
    """

    ref: str
    id: str
    layers: tuple[str, ...]
    layer_dirs: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    from_host_os: bool = False
    history: tuple[dict[str, Any], ...] = field(default=(), hash=False, compare=False)
    config: dict[str, Any] | None = field(default=None, hash=False, compare=False, repr=False)
    store: Any = field(default=None, hash=False, compare=False, repr=False)

    def save(self, path: str, format: str = "oci", *, tag: str | None = None) -> str:
        """Write the image to ``path``: an OCI layout directory (``format="oci"``, gzip'd
        layers, added to the layout if it exists) or a ``docker save`` tar
        (``format="docker-archive"``). ``tag`` names it there (default: from ``ref``).
        Returns ``path``; the image's store writes it (``ImageStore.save``). Raises
        ``ImageError`` for an image of no store, one based on ``host``, an unknown
        ``format`` or a bad ``tag``; ``OSError`` when ``path`` cannot be written."""
        if self.store is None:
            from ..errors import ImageError

            raise ImageError(f"image {self.ref!r} belongs to no image store, so its layers "
                             f"cannot be read; get it from one (nsbox_images.get(ref))")
        saved: str = self.store.save(self, path, format=format, tag=tag)
        return saved

    def __repr__(self) -> str:
        return f"Image(ref={self.ref!r}, id={self.id[:19]!r}, layers={len(self.layers)})"
