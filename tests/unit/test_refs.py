"""images.refs: ``oci:``, ``oci-archive:`` and ``docker-archive:`` references split as skopeo
splits them. The cases are containers/image's own (oci/layout/oci_transport_test.go and
docker/archive/transport_test.go ``testParseReference``), plus the one of issue 9."""
from __future__ import annotations

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images import refs
from pytest_nsbox.images.refs import TransportRef

DIGEST = "@sha256:" + "0" * 64
PATHS = ["/", "/etc", "/tmp/does/not/exist", "relativepath", "/layout"]
OCI_SUFFIXES = [
    (":notlatest:image", "notlatest:image", None),
    (":latestimage", "latestimage", None),
    (":app:1.0", "app:1.0", None),  # what skopeo writes as org.opencontainers.image.ref.name
    (":", None, None),
    ("", None, None),
    (":@0", None, 0),
    (":@10", None, 10),
    (":@999999", None, 999999),
]


@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("suffix", "name", "index"), OCI_SUFFIXES)
def test_oci_splits_at_the_first_colon(transport: str, path: str, suffix: str,
                                       name: str | None, index: int | None) -> None:
    """containers/image oci/internal ``SplitPathAndImage`` (``strings.Cut(reference, ":")``)
    and ``ParseOCIReferenceName`` (``@N``); oci/layout/oci_transport_test.go
    ``testParseReference`` for the paths and suffixes."""
    assert refs.parse(f"{transport}:{path}{suffix}") == TransportRef(transport, path, name, index)


def test_the_issue_example() -> None:
    """Issue 9 item 8: ``oci:/layout:app:1.0`` names ref ``app:1.0`` in ``/layout`` (skopeo
    copy ... oci:/layout:app:1.0 writes exactly that ref name)."""
    assert refs.parse("oci:/layout:app:1.0") == TransportRef("oci", "/layout", "app:1.0")


def test_a_path_with_a_colon_is_cut_at_it() -> None:
    """containers/image ``SplitPathAndImage`` on Linux: the first ':' ends the path, so a
    directory named ``a:b`` cannot be named (``ValidateOCIPath`` forbids ':' in a path)."""
    assert refs.parse("oci:/tmp/a:b/layout:v1") == TransportRef("oci", "/tmp/a", "b/layout:v1")


@pytest.mark.parametrize("suffix", [":invalid'image!value@", ":@", ":@-1", ":@-2", ":@busybox",
                                    ":@0:busybox", ":-leading", ":trailing-", ":a..b", ":a b"])
@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
def test_bad_oci_names_are_refused(transport: str, suffix: str) -> None:
    """containers/image ``ValidateImageName`` (the image spec's ref.name grammar:
    alphanumeric parts joined by one of ``-._:@+`` or ``--``) and ``ParseOCIReferenceName``
    (``@`` then a non-negative integer); oci_transport_test.go's invalid suffixes."""
    with pytest.raises(ImageError, match="not an OCI ref name|invalid source index"):
        refs.parse(f"{transport}:/layout{suffix}")


@pytest.mark.parametrize(("text", "path", "name", "index"), [
    ("/path", "/path", None, None),
    ("/path:busybox:notlatest", "/path", "docker.io/library/busybox:notlatest", None),
    ("/path:busybox", "/path", "docker.io/library/busybox:latest", None),
    ("/path:docker.io/library/busybox:latest", "/path", "docker.io/library/busybox:latest", None),
    ("/path:app:1.0", "/path", "docker.io/library/app:1.0", None),
    ("/path:localhost:5000/team/app:1.0", "/path", "localhost:5000/team/app:1.0", None),
    ("/path:@0", "/path", None, 0),
    ("/path:@999999", "/path", None, 999999),
    ("relative.tar:app", "relative.tar", "docker.io/library/app:latest", None),
])
def test_docker_archive_references(text: str, path: str, name: str | None,
                                   index: int | None) -> None:
    """containers/image docker/archive/transport.go ``ParseReference``: split at the first
    ':', the rest a normalized, tagged docker reference (``ParseNormalizedNamed`` +
    ``TagNameOnly``) or ``@N``; cases from transport_test.go ``testParseReference``."""
    assert refs.parse(f"docker-archive:{text}") == TransportRef("docker-archive", path, name, index)


@pytest.mark.parametrize(("text", "match"), [
    ("", "no path"),
    ("/path:busybox" + DIGEST, "digest"),
    ("/path:busybox:latest" + DIGEST, "digest"),
    ("/path:UPPERCASEISINVALID", "not a repository name"),
    ("/path:@", "invalid source index"),
    ("/path:@-2", "invalid source index"),
    ("/path:@-1", "invalid source index"),
    ("/path:busybox@0", "digest"),
    ("/path:@0:busybox", "invalid source index"),
])
def test_bad_docker_archive_references_are_refused(text: str, match: str) -> None:
    """containers/image docker/archive/transport_test.go ``testParseReference``: each of
    these is an error there (empty input, digests, invalid names, bad source indices)."""
    with pytest.raises(ImageError, match=match) as info:
        refs.parse(f"docker-archive:{text}")
    assert str(info.value).startswith(f"image 'docker-archive:{text}': ")


@pytest.mark.parametrize("ref", ["oci", "docker:x", "dir:/x", "busybox", "oci/layout:v1"])
def test_other_references_are_not_transport_references(ref: str) -> None:
    """skopeo's transports are named before the first ':'; only these three are ours."""
    assert not refs.is_transport_ref(ref)
    with pytest.raises(ImageError, match="not a transport reference"):
        refs.parse(ref)


@pytest.mark.parametrize("ref", ["oci:/x", "oci-archive:x.tar:v1", "docker-archive:x.tar"])
def test_transport_references_are_recognised(ref: str) -> None:
    assert refs.is_transport_ref(ref)


@pytest.mark.parametrize("ref", ["oci:/layout:app:1.0", "oci:/layout", "oci-archive:x.tar:@3",
                                 "docker-archive:/d.tar:docker.io/library/app:1.0"])
def test_a_parsed_reference_prints_back(ref: str) -> None:
    """containers/image ``StringWithinTransport``: parsing what it prints gives the same."""
    assert str(refs.parse(ref)) == ref
    assert refs.parse(str(refs.parse(ref))) == refs.parse(ref)


@pytest.mark.parametrize(("tag", "wanted", "same"), [
    ("app:1.0", "docker.io/library/app:1.0", True),
    ("docker.io/library/app:1.0", "docker.io/library/app:1.0", True),
    ("index.docker.io/library/app:1.0", "docker.io/library/app:1.0", True),
    ("app", "docker.io/library/app:latest", True),
    ("app:1.1", "docker.io/library/app:1.0", False),
    ("other/app:1.0", "docker.io/library/app:1.0", False),
    ("NOT VALID", "docker.io/library/app:1.0", False),
])
def test_repo_tags_are_compared_normalized(tag: str, wanted: str, same: bool) -> None:
    """containers/image docker/internal/tarfile reader.go ``ChooseManifestItem``: each
    RepoTags entry is ``ParseNormalizedNamed`` and compared by its ``String()``."""
    assert refs.same_docker_name(tag, wanted) is same
