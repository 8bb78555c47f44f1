"""L4: building Containerfiles into the image store, above the runtime its ``RUN`` steps use.

- ``builder``: the build as BuildKit's Dockerfile frontend runs it (stages, ARGs, the step
  cache, ``RUN`` in a box of the runtime, the image config).
- ``containerfile``: the Containerfile parser (BuildKit's ``parser`` and ``instructions``).
- ``shell_lex``: variable expansion as BuildKit's ``shell/lex.go``.
- ``copy``: ``COPY`` and ``ADD``: what they read and the layer they write.

The image store (L2) cannot import this package; it is given a builder instead
(``images.build.ImageBuilder``). ``ContainerfileBuilder`` is that builder;
``pytest_nsbox/__init__.py`` installs it as the default every ``Engine`` gives its store.
This module stays small: the builder's modules load at the first build.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..images.store import ImageStore
    from ..model.image import Image


class ContainerfileBuilder:
    """``images.build.ImageBuilder`` for Containerfiles (``builder.build``)."""

    def build(self, store: ImageStore, path_or_name: str, *, tag: str | None,
              build_args: Mapping[str, str], target: str | None) -> Image:
        """Build fixtures image ``path_or_name`` (or the Containerfile at or in that path)
        into ``store``; see ``images.build.ImageBuilder.build``. Raises ``ImageError``."""
        from .builder import build

        return build(store, path_or_name, tag=tag, build_args=build_args, target=target)
