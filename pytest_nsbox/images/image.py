"""What a box runs: an ordered stack of read-only layer directories plus run defaults."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Image:
    """An image in the store. ``layers`` are layer ids bottom first (CONTRACT.md).

    ``layer_dirs`` are the host directories overlayfs stacks, bottom first. ``host_root``
    marks the built-in ``host`` image, whose bottom layer is the host's own ``/``: a box of it
    also gets the pytest rootdir and the running Python bound in read-only.
    """

    ref: str
    id: str
    layers: tuple[str, ...]
    layer_dirs: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    host_root: bool = False

    def __repr__(self) -> str:
        return f"Image(ref={self.ref!r}, id={self.id[:12]!r}, layers={len(self.layers)})"
