"""Transport references as skopeo and containers/image parse them.

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

from ..errors import ImageError

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
    from .registry import Reference

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
    from .registry import Reference

    try:
        return str(Reference.parse(tag)) == wanted
    except ImageError:
        return False
