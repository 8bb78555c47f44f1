"""What the image store knows of building: the ``ImageBuilder`` it calls, and build args.

The Containerfile builder itself is above the runtime (``pytest_nsbox/build``: its ``RUN``
steps run in boxes), while the store that asks for builds is below it. So the store takes
a builder at construction (dependency inversion): anything with ``ImageBuilder``'s
``build`` method. ``runtime.engine.Engine`` passes the builder it was given to the store it
makes, by default ``default_builder()``: the one ``pytest_nsbox/__init__.py`` installs
(``build.ContainerfileBuilder``), the package's one wiring point.

Build args (``ARG`` values) are parsed and checked here, for every place they come from:
``nsbox_images.build(build_args=...)``, ``--nsbox-build-arg``, ini ``nsbox_build_args`` and
``images build --build-arg``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ImageError

if TYPE_CHECKING:
    from ..model.image import Image
    from .store import ImageStore


class ImageBuilder(Protocol):
    """Builds Containerfiles into an image store."""

    def build(self, store: ImageStore, path_or_name: str, *, tag: str | None,
              build_args: Mapping[str, str], target: str | None) -> Image:
        """Build the Containerfile of fixtures image ``path_or_name`` (a name in
        ``store.fixtures_dir()``) or at (or in) that path, into ``store``; ``tag`` names
        the result (default: the image's name), ``build_args`` are the ``ARG`` values
        (already checked, the store's own included), ``target`` the stage to build
        (default: the last). Returns the recorded ``Image``; raises ``ImageError``."""
        ...


_default: ImageBuilder | None = None


def install_default_builder(builder: ImageBuilder) -> None:
    """Make ``builder`` what ``default_builder()`` returns (``pytest_nsbox/__init__.py``
    installs the Containerfile builder, once, when the package is imported)."""
    global _default
    _default = builder


def default_builder() -> ImageBuilder | None:
    """The builder an ``Engine`` gives its image store when it is given none; None before
    one is installed."""
    return _default


def check_build_args(build_args: Any, source: str = "build_args") -> dict[str, str]:
    """``build_args`` as a dict of str to str, or an ImageError naming the bad entry."""
    if build_args is None:
        return {}
    if not isinstance(build_args, Mapping):
        raise ImageError(f"{source}={build_args!r}: not a mapping of ARG names to values; use "
                         f"e.g. {{'VERSION': '1.2'}}")
    out: dict[str, str] = {}
    for key, value in build_args.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ImageError(f"{source}: {key!r} is not an ARG name; use e.g. "
                             f"{{'VERSION': '1.2'}}")
        if not isinstance(value, str):
            raise ImageError(f"{source}: {key}={value!r}: values are strings; use e.g. "
                             f"{{{key!r}: '{value}'}}")
        out[key] = value
    return out


def parse_build_arg(text: str, source: str) -> tuple[str, str] | None:
    """``KEY=VALUE``, or ``KEY`` alone: its value from this process's environment, None
    when it has none (docker/cli ``opts.ValidateEnv``, as ``--build-arg KEY`` reads it).
    An empty name (``=x``, or nothing at all) is an ``ImageError`` naming ``source``, as
    ``ValidateEnv`` refuses it ("invalid environment variable")."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ImageError(f"{source} {text!r}: not KEY=VALUE (the name is empty); use e.g. "
                         f"VERSION=1.2")
    if eq:
        return key, value
    if key in os.environ:
        return key, os.environ[key]
    return None


#: Where build args come from, as errors name them.
INI_BUILD_ARGS = "ini nsbox_build_args"
PYTEST_BUILD_ARG = "--nsbox-build-arg"
CLI_BUILD_ARG = "images build --build-arg"


def collect_build_args(lines: list[str], options: list[str],
                       option: str = PYTEST_BUILD_ARG) -> dict[str, str]:
    """Build args from ini ``nsbox_build_args`` lines, then the command line's options
    (``option`` names them in errors: ``--nsbox-build-arg``, or the CLI's ``images build
    --build-arg``), which win: each ``KEY=VALUE``, or ``KEY`` alone for its value in the
    environment (skipped when unset). Blank ini lines are skipped; an empty option
    (``--nsbox-build-arg ''``) is an error, as docker/cli's ``ValidateEnv`` makes
    ``--build-arg ''``. Raises ImageError."""
    out: dict[str, str] = {}
    for source, items in ((INI_BUILD_ARGS, lines), (option, options)):
        for item in items:
            if source == INI_BUILD_ARGS and not item.strip():
                continue
            pair = parse_build_arg(item, source)
            if pair is not None:
                out[pair[0]] = pair[1]
    return out

