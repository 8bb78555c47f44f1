"""The image store's front door: references resolved to images; build, load, save, pull.

``ImageStore`` is the ``ContentStore`` (``content.py``: the files under the store
directory, their layout and locking) plus what turns a reference into an ``Image``: the
built-ins, transports (``oci``), image ids, ``fixtures_images`` folders (built by the
``ImageBuilder`` it was given, ``build.py``), tags, resolvers and registries (``registry``).
It is what the plugin's ``nsbox_images`` fixture, ``Box(image=...)`` and the command line
use; ``oci`` and ``registry`` work below it, on the content alone.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

from ..errors import ImageError
from ..model.image import Image
from ..state import StateDirs
from . import oci, refs, registry
from .build import ImageBuilder, check_build_args
from .content import BUILTIN, ContentStore

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class ImageStore(ContentStore):
    """Resolves references to ``Image`` objects; builds, imports, pulls and records them.

    ``builder`` builds Containerfiles (``fixtures_images`` folders, ``build()``); a store
    without one raises ``ImageError`` when asked to build. Settings a caller (the plugin)
    may set: ``images_dir`` (the ``fixtures_images`` folder; default
    ``$NSBOX_IMAGES_DIR``, else ``./fixtures_images``), ``rootdir`` (relative
    ``oci:``/``docker-archive:`` paths start there; default the working directory),
    ``insecure_registries`` (``host:port`` names reached over plain http), ``progress``
    (called with one line per build step and per pulled layer), ``run_timeout`` (seconds
    one ``RUN`` step may take), ``build_args`` (``ARG`` values for every Containerfile
    build: ``--nsbox-build-arg``, ini ``nsbox_build_args``) and ``image_cache``
    (``registry/repository`` the builder looks steps up in and pushes them to: ini
    ``nsbox_image_cache``; None: no shared cache).
    """

    def __init__(self, dirs: StateDirs, *, builder: ImageBuilder | None = None,
                 images_dir: str | None = None,
                 insecure_registries: list[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        super().__init__(dirs, progress=progress)
        self.builder = builder
        self.images_dir = images_dir
        self.rootdir: str | None = None
        self.insecure_registries: list[str] = list(insecure_registries or [])
        self.run_timeout = 600.0
        self.build_args: dict[str, str] = {}
        self.image_cache: str | None = None
        self.last_pull: registry.Pulled | None = None  # what the last pull downloaded
        self._cache: dict[str, Image] = {}
        # Asked in order for references the store does not know (the plugin adds the
        # ``pytest_nsbox_resolve_image`` hook here).
        self.resolvers: list[Callable[[str], Image | None]] = []

    def _changed(self, *, ref: str | None = None, image_id: str | None = None) -> None:
        if ref is not None:
            self._cache.pop(ref, None)
        if image_id is not None:
            self._cache = {k: v for k, v in self._cache.items() if v.id != image_id}

    # -- paths ---------------------------------------------------------------------------
    def fixtures_dir(self) -> str:
        found = self.images_dir or os.environ.get("NSBOX_IMAGES_DIR") or "fixtures_images"
        return os.path.abspath(os.path.join(self.rootdir or os.getcwd(), found))

    def abspath(self, path: str) -> str:
        return os.path.abspath(os.path.join(self.rootdir or os.getcwd(), path))

    # -- resolving references ------------------------------------------------------------
    def get(self, ref: str) -> Image:
        """The ``Image`` that reference ``ref`` names, resolved once per store object.

        Resolution order (the first that matches wins):

        1. the built-ins ``host``, ``busybox``, ``scratch``;
        2. the transports ``oci:PATH[:REF]``, ``oci-archive:PATH[:REF]``,
           ``docker-archive:PATH[:NAME:TAG]`` (containers/image's transport names; the path
           ends at the first ``:``), imported into the store;
        3. an image id in the store: ``sha256:<64 hex>``, or a unique prefix of 12+ hex;
        4. a folder ``NAME/`` with a ``Containerfile`` in ``fixtures_images`` (built,
           from the step cache when unchanged, and tagged ``NAME``);
        5. a tag in the store (``ref``, ``ref:latest``, and its Docker-normalized form
           ``docker.io/library/ref:latest``);
        6. ``self.resolvers`` in order (the plugin's ``pytest_nsbox_resolve_image`` hook);
        7. a registry, for a reference that names one (``host[:port]/name[:tag|@digest]``
           or ``docker://...``; Docker Hub is ``docker.io/...``), pulled into the store.

        Raises ``ImageError`` for an empty or non-str ``ref``, an unknown one (naming the
        built-ins and the fixtures images there are), an ambiguous id prefix, a resolver
        that returns something other than an ``Image``, and any build, import or pull
        failure."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(f"image {ref!r}: not an image reference; use e.g. 'busybox'")
        image = self._cache.get(ref)
        if image is None:
            image = self._resolve(ref)
            self._cache[ref] = image
        return image

    def _resolve(self, ref: str) -> Image:
        if ref in BUILTIN:
            return self.builtin(ref)
        if refs.is_transport_ref(ref):
            return oci.load_ref(self, ref, self.abspath("."))
        found = self.find(ref)
        if found is not None:
            return found
        fixture = self.fixture_path(ref)
        if fixture is not None:
            return self.build(fixture, tag=ref)
        tagged = self.find_tag(ref)
        if tagged is not None:
            return tagged
        for resolve in self.resolvers:
            image = resolve(ref)
            if image is not None:
                if not isinstance(image, Image):
                    raise ImageError(f"image {ref!r}: a resolver returned {image!r}, "
                                     f"not an Image")
                return image
        if refs.looks_like_registry_ref(ref):
            return self.pull(ref)
        if not _NAME.match(ref):
            raise ImageError(f"image {ref!r}: unknown; no image in the store has this name, and "
                             f"a registry image needs its registry, e.g. "
                             f"'registry.example:5000/{ref}'")
        names = self.fixture_names()
        fixtures = (f"; fixtures images in {self.fixtures_dir()}: {', '.join(names)}" if names
                    else f"; no fixtures image {ref!r} in {self.fixtures_dir()} (a folder "
                         f"{ref}/ holding a Containerfile)")
        raise ImageError(f"image {ref!r}: unknown; the built-in images are 'host', 'busybox' "
                         f"and 'scratch'{fixtures}; a registry image needs its registry, e.g. "
                         f"'registry.example:5000/{ref}:latest'")

    @contextlib.contextmanager
    def named(self, ref: str, image: Image) -> Iterator[None]:
        """While the block runs, ``get(ref)`` is ``image`` (a Containerfile build names the
        image of its steps so far this way, for the box of a ``RUN`` step)."""
        self._cache[ref] = image
        try:
            yield
        finally:
            self._cache.pop(ref, None)

    def fixture_path(self, name: str) -> str | None:
        if not _NAME.match(name):
            return None
        folder = os.path.join(self.fixtures_dir(), name)
        return folder if os.path.isfile(os.path.join(folder, "Containerfile")) else None

    def fixture_names(self) -> list[str]:
        try:
            names = os.listdir(self.fixtures_dir())
        except OSError:
            return []
        return sorted(n for n in names if self.fixture_path(n))

    # -- front doors ---------------------------------------------------------------------
    def build(self, path_or_name: str | os.PathLike[str], tag: str | None = None,
              build_args: dict[str, str] | None = None, target: str | None = None) -> Image:
        """Build a fixtures image by name, or the Containerfile at (or in) a path.

        ``build_args`` are ``ARG`` values (over ``self.build_args``); ``target`` names the
        stage to build (default: the last); ``tag`` names the result in the store
        (a fixtures image is tagged with its name). Steps are cached as BuildKit caches
        them, by the store's ``builder``. Returns the ``Image``; raises ``ImageError`` for
        a store without a builder, ``build_args`` that are not a mapping of names to
        strings, a missing Containerfile, a parse error, an unknown base image or stage, a
        failing ``RUN`` (its status and output's tail) or a step past ``run_timeout``
        seconds."""
        if self.builder is None:
            raise ImageError(f"image {os.fspath(path_or_name)!r}: this image store "
                             f"({self.dirs.store}) was made without a Containerfile builder, "
                             f"so it cannot build; use the store of pytest's nsbox_images "
                             f"fixture or of an Engine (runtime.engine), which have one")
        args = {**check_build_args(self.build_args, "build args"),
                **check_build_args(build_args)}
        return self.builder.build(self, os.fspath(path_or_name), tag=tag, build_args=args,
                                  target=target)

    def load(self, path: str | os.PathLike[str], tag: str | None = None) -> Image:
        """Import a ``docker save`` tar (classic or Docker 25+), an OCI layout directory
        or an OCI archive (OCI image layout spec) at ``path`` (relative to ``rootdir``);
        ``tag`` names the image in the store. Every blob is checked against its digest.
        Returns the ``Image``; raises ``ImageError`` for a missing path, a file of no such
        format, a digest mismatch or an archive holding several images."""
        return oci.load_path(self, self.abspath(os.fspath(path)), tag=tag)

    def save(self, image: Image, path: str | os.PathLike[str], format: str = "oci", *,
             tag: str | None = None) -> str:
        """Write ``image`` to ``path`` as an OCI layout (``format="oci"``) or a ``docker
        save`` tar (``"docker-archive"``); see ``Image.save``. Returns ``path``. Raises
        ``ImageError`` for an unknown ``format``, a bad ``tag``, an image based on
        ``host`` (its bottom layer is this machine's ``/``) or of no store; ``OSError``
        when ``path`` cannot be written."""
        return oci.save(image, os.fspath(path), format=format, tag=tag)

    def pull(self, ref: str) -> Image:
        """Pull ``ref`` from its registry (layers already here are not downloaded) over
        https, or plain http for ``insecure_registries``; ``last_pull`` says what was
        downloaded. Raises ``ImageError`` (``registry.pull``)."""
        pulled = registry.pull(self, ref, self.insecure_registries)
        self.last_pull = pulled
        self._cache[ref] = pulled.image
        return pulled.image
