"""Image references: registry references as Docker normalizes them, transport references
as skopeo and containers/image parse them, and digests.

``Reference`` is ``[registry/]repository[:tag][@digest]`` (distribution/reference's
grammar and normalization). ``check_digest`` accepts the one digest algorithm the store
uses, ``sha256:<64 hex>`` (OCI image spec descriptor.md "Digests").


``oci:PATH[:REF]``, ``oci-archive:PATH[:REF]`` and ``docker-archive:PATH[:NAME[:TAG]]`` each
split at the *first* ``:`` after the transport name (containers/image
``oci/internal.SplitPathAndImage``, ``docker/archive.ParseReference``: ``strings.Cut``), so
the path can hold no ``:`` and everything after it is the image's name in the layout or
archive, colons included. skopeo writes OCI ref names such as ``app:1.0`` into
``index.json`` (``org.opencontainers.image.ref.name``); ``oci:/layout:app:1.0`` names that
one. Either part may also be ``@N``: the N-th image of the layout or archive (counted from
0, ``ParseOCIReferenceName`` and the docker-archive ``sourceIndex``).

An OCI ref name must match the image-spec's ``ref.name`` grammar as containers/image checks
it (``ValidateImageName``). A docker-archive name is a docker reference, normalized as
Docker does (``app`` is ``docker.io/library/app:latest``) and matched against each image's
normalized ``RepoTags``; a digest is refused (``docker-archive`` references are tags).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ImageError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def check_digest(digest: Any, where: str) -> str:
    """``digest`` when it is ``sha256:<64 hex>``; else an ``ImageError`` naming ``where``."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"{where}: {digest!r} is not a sha256 digest (sha256:<64 hex>); "
                         f"only sha256 is supported")
    return digest


# -- registry references ------------------------------------------------------------------

#: Docker Hub as references name it, and the host its API answers on.
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
#: Other names of Docker Hub, normalized to ``DOCKER_HUB``.
HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")


@dataclass(frozen=True)
class Reference:
    """``[registry/]repository[:tag][@digest]``, normalized as docker does
    (distribution/reference ``ParseNormalizedNamed``: ``app`` is
    ``docker.io/library/app``, a reference without tag or digest gets ``latest``)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """``ref`` (``docker://`` allowed in front) parsed and normalized; ``ImageError``
        for a bad tag, digest or repository name."""
        text = ref[len("docker://"):] if ref.startswith("docker://") else ref
        name, _, digest = text.partition("@")
        if digest:
            check_digest(digest, f"image {ref!r}")
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
        else:
            registry, path = DOCKER_HUB, name
        tag = None
        colon = path.rfind(":")
        if colon > path.rfind("/"):
            path, tag = path[:colon], path[colon + 1:]
            if not _TAG.match(tag):
                raise ImageError(f"image {ref!r}: {tag!r} is not a valid tag")
        if registry in HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not _PATH.match(path):
            raise ImageError(f"image {ref!r}: {path!r} is not a repository name (lower-case "
                             f"letters, digits, '.', '_', '-' and '/')")
        if tag is None and digest == "":
            tag = "latest"
        return cls(registry=registry, repository=path, tag=tag, digest=digest or None)


def looks_like_registry_ref(ref: str) -> bool:
    """A reference that names its registry (``host[:port]/name...``) or a digest."""
    if ref.startswith("docker://"):
        return True
    first, slash, _rest = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")



# -- transport references -----------------------------------------------------------------

#: The transports this module parses, as written before the first ``:``.
TRANSPORTS = ("oci", "oci-archive", "docker-archive")

# containers/image oci/internal/oci_util.go: the ref.name grammar of the image spec's
# annotations.md ("org.opencontainers.image.ref.name").
_SEPARATOR = r"(?:[-._:@+]|--)"
_ALPHANUM = r"[A-Za-z0-9]+"
_COMPONENT = rf"{_ALPHANUM}(?:{_SEPARATOR}{_ALPHANUM})*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")


@dataclass(frozen=True)
class TransportRef:
    """A parsed ``TRANSPORT:PATH[:NAME|@INDEX]`` reference.

    ``name`` is the OCI ref name (``oci``, ``oci-archive``) or the normalized docker
    reference (``docker-archive``: ``docker.io/library/app:1.0``); ``index`` the
    ``@N`` image; both None: the only image there is.
    """

    transport: str
    path: str
    name: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.transport}:{self.path}:@{self.index}"
        return f"{self.transport}:{self.path}" + (f":{self.name}" if self.name else "")


def is_transport_ref(ref: str) -> bool:
    """Whether ``ref`` names one of ``TRANSPORTS`` (``oci:...``)."""
    transport, colon, _rest = ref.partition(":")
    return bool(colon) and transport in TRANSPORTS


def valid_oci_ref_name(name: str) -> bool:
    """containers/image ``ValidateImageName``: the image spec's ``ref.name`` grammar."""
    return bool(_REF_NAME.match(name))


def _index(text: str, ref: str) -> int:
    """The ``N`` of ``@N`` (containers/image ``ParseOCIReferenceName``)."""
    digits = text[1:]
    if not digits.isascii() or not digits.isdigit():
        raise ImageError(f"image {ref!r}: invalid source index {text!r}: not a whole number "
                         f"(use e.g. @0 for the first image)")
    return int(digits)


def parse(ref: str) -> TransportRef:
    """Split ``ref`` as skopeo does; ``ImageError`` naming what is wrong.

    Raises for an unknown transport, an empty path, an OCI name outside the ref.name
    grammar, a docker-archive name that is not a tagged docker reference, and a malformed
    ``@N``. Whether the path exists is for the loader to find out.
    """
    transport, colon, rest = ref.partition(":")
    if not colon or transport not in TRANSPORTS:
        raise ImageError(f"image {ref!r}: not a transport reference; use oci:PATH[:REF], "
                         f"oci-archive:PATH[:REF] or docker-archive:PATH[:NAME:TAG]")
    path, colon, image = rest.partition(":")  # the first ':' ends the path (strings.Cut)
    if not path:
        form = "PATH[:NAME:TAG]" if transport == "docker-archive" else "PATH[:REF]"
        raise ImageError(f"image {ref!r}: no path; use {transport}:{form}, e.g. "
                         f"{transport}:/tmp/image{'.tar' if 'archive' in transport else ''}")
    if not image:
        return TransportRef(transport, path)
    if image.startswith("@"):
        return TransportRef(transport, path, index=_index(image, ref))
    if transport == "docker-archive":
        return TransportRef(transport, path, name=docker_name(image, ref))
    if not valid_oci_ref_name(image):
        raise ImageError(f"image {ref!r}: {image!r} is not an OCI ref name (letters and "
                         f"digits, joined by one of '-._:@+' or '--', in '/'-separated "
                         f"parts, e.g. 'app:1.0'); the path ends at the first ':'")
    return TransportRef(transport, path, name=image)


def docker_name(name: str, ref: str) -> str:
    """A docker-archive image name as Docker normalizes it: ``app`` ->
    ``docker.io/library/app:latest`` (distribution/reference ``ParseNormalizedNamed`` and
    ``TagNameOnly``). A digest is refused, as containers/image does."""
    if "@" in name:
        raise ImageError(f"image {ref!r}: docker-archive does not support digest references "
                         f"({name!r}); name the image by its tag, e.g. app:1.0")
    try:
        parsed = Reference.parse(name)
    except ImageError as exc:
        raise ImageError(f"image {ref!r}: docker-archive parsing reference: "
                         f"{str(exc).removeprefix(f'image {name!r}: ')}") from None
    return str(parsed)


def same_docker_name(tag: str, wanted: str) -> bool:
    """Whether a ``RepoTags`` entry names ``wanted`` (already normalized), as
    containers/image's tarfile ``ChooseManifestItem`` compares them."""
    try:
        return str(Reference.parse(tag)) == wanted
    except ImageError:
        return False
