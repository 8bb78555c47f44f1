"""The registry client: the distribution API v2 (``/v2/<name>/manifests|blobs/...``), and
pulls. Pushes (``push.py``) use the same ``Client`` with the ``push`` action.

Authentication follows the registry's ``WWW-Authenticate`` challenge: none, ``Basic``
(credentials sent to the registry itself) or ``Bearer`` (a token fetched from the realm it
names, with the credentials if there are any, anonymously if not). Credentials come from
``$REGISTRY_AUTH_FILE`` (containers' auth.json), then ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json`` (``auths`` entries, as ``docker login`` writes them; credential
helpers are not run). Plain http is used only for registries the user lists as insecure.

Manifests are requested with all four manifest media types in ``Accept`` (a registry may
answer 404 for an OCI image otherwise); a manifest list or OCI index picks linux on the
host's architecture. Every manifest, config and layer is checked against its digest; layers
already in the store are not downloaded again. Every network wait is bounded by a socket
timeout.

Where a blob was seen (pulled from, or pushed to, ``registry/repository``) is remembered in
``<store>/bloblocations/<hex>.json`` (``BlobLocations``), as containers/image's blob info
cache remembers it (``RecordKnownLocation``): a push to another repository of the same
registry can then mount the blob from there instead of uploading it.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import IO, Any

from ..errors import ImageError
from ..model.image import Image
from ..model.image_records import Record
from . import layers as layerfs
from .content import ContentStore, read_record, write_record
from .oci import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX,
                  OCI_MANIFEST, import_manifest, parse_json, pick_platform)
from .refs import DOCKER_HUB, HUB_ALIASES, Reference, check_digest

TIMEOUT = 30.0
MAX_REDIRECTS = 5
MAX_MANIFEST = 4 << 20
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
#: How many repositories a blob's known locations keep (the most recent).
MAX_LOCATIONS = 16
# -- credentials --------------------------------------------------------------------------

def _auth_files() -> list[str]:
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(os.environ["REGISTRY_AUTH_FILE"])
    docker = os.environ.get("DOCKER_CONFIG")
    files.append(os.path.join(docker, "config.json") if docker
                 else os.path.expanduser("~/.docker/config.json"))
    return files


def _host_of(key: str) -> str:
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    host = key.split("/", 1)[0]
    return DOCKER_HUB if host in HUB_ALIASES else host


def credentials(registry: str) -> tuple[str, str, str] | None:
    """``(user, password, file)`` for ``registry`` from the auth files, if any."""
    for path in _auth_files():
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise ImageError(f"{path}: unreadable registry credentials ({exc})") from None
        for key, entry in (data.get("auths") or {}).items():
            if _host_of(key) != registry or not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise ImageError(f"{path}: auths[{key!r}].auth is not base64 of "
                                     f"user:password") from None
                return user, password, path
            if entry.get("username"):
                return entry["username"], entry.get("password", ""), path
    return None


# -- the client ---------------------------------------------------------------------------

def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


#: A request body: bytes, or a seekable file read from its current position.
Body = bytes | IO[bytes] | None


class Client:
    """The distribution API of ``ref``'s registry, over https unless its host (or
    ``host:port``) is in ``insecure``; blobs already in ``store`` are read from there.

    ``push`` asks for the ``pull,push`` actions on ``ref``'s repository when a token is
    needed (containers/image ``newDockerClient``'s scope for a destination), else ``pull``.
    ``request`` sends any method; a request answered ``401`` is authorized from the
    challenge and sent again once, its body rewound.
    """

    def __init__(self, store: ContentStore, ref: Reference,
                 insecure: Collection[str] = (), *, push: bool = False) -> None:
        self.store = store
        self.ref = ref
        host = ref.api_host
        self.scheme = "http" if (host in insecure or ref.registry in insecure) else "https"
        self.creds = credentials(ref.registry)
        self.actions = "pull,push" if push else "pull"
        # Authorization per extra repository a request reads (a mount's source), None: none.
        self.auths: dict[str | None, str] = {}
        self.downloaded = 0
        self.blobs = 0

    @property
    def base(self) -> str:
        """``scheme://host`` of the registry's API."""
        return f"{self.scheme}://{self.ref.api_host}"

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT)

    def _send(self, method: str, url: str, headers: dict[str, str],
              body: Body = None) -> http.client.HTTPResponse:
        """Send one request, following redirects of GET and HEAD (credentials never leave
        the registry host). Uploads are answered with ``Location`` headers, not
        redirects (distribution spec, "Pushing blobs")."""
        auth_host = urllib.parse.urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "http" and self.scheme != "http":
                raise ImageError(f"registry {self.ref.registry}: redirected to plain http "
                                 f"({parts.netloc}); refused (list the registry in ini "
                                 f"nsbox_insecure_registries only if that is intended)")
            conn = self._connect(parts.scheme, parts.netloc)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            hdrs = dict(headers)
            if parts.netloc != auth_host:
                hdrs.pop("Authorization", None)
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
            except ssl.SSLError as exc:
                conn.close()
                raise ImageError(f"registry {self.ref.registry}: TLS failed ({exc}); if it "
                                 f"speaks plain http, list it in ini nsbox_insecure_registries"
                                 ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ImageError(f"registry {self.ref.registry}: cannot reach {parts.netloc} "
                                 f"over {parts.scheme} ({exc}); is it running? plain-http "
                                 f"registries must be listed in ini nsbox_insecure_registries"
                                 ) from None
            if method in ("GET", "HEAD") and resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location") or ""
                resp.read()
                conn.close()
                url = urllib.parse.urljoin(url, location)
                continue
            return resp
        raise ImageError(f"registry {self.ref.registry}: more than {MAX_REDIRECTS} redirects")

    def url(self, path_or_url: str) -> str:
        """An absolute URL: ``path_or_url`` itself, or a path (``/v2/...``) on the registry;
        a ``Location`` header may be either (RFC 7231 section 7.1.2)."""
        return urllib.parse.urljoin(self.base + "/", path_or_url)

    def request(self, method: str, path_or_url: str, *, accept: str | None = None,
                headers: dict[str, str] | None = None, body: Body = None,
                reads: str | None = None) -> http.client.HTTPResponse:
        """``method`` on ``path_or_url`` (see ``url``), authorized for this client's
        repository and, with ``reads``, for pulling from repository ``reads`` too (a
        cross-repository mount's source, containers/image ``extraScope``). Returns the
        response (any status but a second ``401``); raises ``ImageError`` when the
        registry cannot be reached or refuses the credentials."""
        url = self.url(path_or_url)
        hdrs = {"User-Agent": "pytest-nsbox", "Accept": accept or "*/*", **(headers or {})}
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        tried_auth = False
        while True:
            auth = self.auths.get(reads)
            if auth:
                hdrs["Authorization"] = auth
            resp = self._send(method, url, hdrs, body)
            if resp.status != 401:
                return resp
            challenge = resp.getheader("WWW-Authenticate") or ""
            detail = resp.read(65536)
            resp.close()
            if tried_auth:
                raise self._denied(detail, _challenge(challenge)[1])
            tried_auth = True
            self.auths[reads] = self._authorize(challenge, detail, reads)
            if body is not None and not isinstance(body, bytes):
                body.seek(start)

    def get(self, path: str, accept: str | None = None) -> http.client.HTTPResponse:
        return self.request("GET", path, accept=accept)

    def _denied(self, body: bytes, challenge: dict[str, str] | None = None) -> ImageError:
        detail = error_text(body)
        challenge = challenge or {}
        if challenge.get("error") == "insufficient_scope":
            # A token came, without the rights asked for (Docker's token spec: the
            # server grants what the account may do).
            who = (f"user {self.creds[0]!r} (credentials from {self.creds[2]})" if self.creds
                   else "anonymous access")
            scope = challenge.get("scope") or f"repository:{self.ref.repository}:{self.actions}"
            return ImageError(f"registry {self.ref.registry}: {who} is not granted {scope}"
                              f"{detail}; the account needs {self.actions.replace(',', ' and ')}"
                              f" rights on {self.ref.repository}")
        if self.creds:
            user, _pw, path = self.creds
            return ImageError(f"registry {self.ref.registry}: authentication failed for user "
                              f"{user!r} (credentials from {path}){detail}; check the user "
                              f"name and password (docker login {self.ref.registry})")
        return ImageError(f"registry {self.ref.registry}: {self.ref.repository} needs "
                          f"credentials{detail}; run `docker login {self.ref.registry}` or put "
                          f"them in $REGISTRY_AUTH_FILE")

    def _authorize(self, challenge: str, body: bytes, reads: str | None = None) -> str:
        scheme, params = _challenge(challenge)
        if scheme == "basic":
            if not self.creds:
                raise self._denied(body)
            user, password, _path = self.creds
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if scheme == "bearer":
            return "Bearer " + self._token(params, reads)
        raise ImageError(f"registry {self.ref.registry}: unsupported authentication "
                         f"{challenge!r} (Basic and Bearer are supported)")

    def scopes(self, challenged: str = "", reads: str | None = None) -> list[str]:
        """The token scopes to ask for (Docker's token spec, ``scope`` parameters): this
        client's repository with its actions, ``reads`` with ``pull``, then any other the
        challenge names."""
        wanted = [f"repository:{self.ref.repository}:{self.actions}"]
        if reads is not None:
            wanted.append(f"repository:{reads}:pull")
        for scope in challenged.split():
            name = scope.rsplit(":", 1)[0]
            if not any(w.rsplit(":", 1)[0] == name for w in wanted):
                wanted.append(scope)
        return wanted

    def _token(self, params: dict[str, str], reads: str | None = None) -> str:
        realm = params.get("realm")
        if not realm:
            raise ImageError(f"registry {self.ref.registry}: a Bearer challenge without realm")
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in self.scopes(params.get("scope", ""), reads)]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and self.scheme != "http":
            raise ImageError(f"registry {self.ref.registry}: token realm {realm} is plain "
                             f"http; refused")
        headers = {"User-Agent": "pytest-nsbox", "Accept": "application/json"}
        if self.creds:
            user, password, _path = self.creds
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()
        resp = self._send("GET", url, headers)
        body = resp.read(1 << 20)
        if resp.status in (401, 403):
            raise self._denied(body)
        if resp.status != 200:
            raise ImageError(f"registry {self.ref.registry}: token server {parts.netloc} "
                             f"answered HTTP {resp.status}{error_text(body)}")
        data = parse_json(body, f"token from {realm}")
        token = data.get("token") or data.get("access_token")
        if not token:
            raise ImageError(f"registry {self.ref.registry}: the token server's answer holds no "
                             f"token")
        return str(token)

    # -- API calls -----------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str]:
        """``(manifest, its media type)`` of tag or digest ``reference``; ``ImageError``
        when there is none, or the registry fails."""
        found = self.find_manifest(reference)
        if found is None:
            raise ImageError(f"image {self.ref}: not found in registry {self.ref.registry} "
                             f"(no manifest {reference!r})")
        return found

    def find_manifest(self, reference: str) -> tuple[bytes, str] | None:
        """``manifest``, but None where the registry answers ``404`` (no such tag, or no
        such repository yet)."""
        resp = self.get(f"/v2/{self.ref.repository}/manifests/{reference}", ACCEPT)
        body = resp.read(MAX_MANIFEST + 1)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise ImageError(f"image {self.ref}: registry {self.ref.registry} answered HTTP "
                             f"{resp.status} for manifest {reference!r}{error_text(body)}")
        if len(body) > MAX_MANIFEST:
            raise ImageError(f"image {self.ref}: manifest larger than 4 MiB; refused")
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        return body, ctype

    def blob(self, digest: str) -> _Counting:
        resp = self.get(f"/v2/{self.ref.repository}/blobs/{digest}")
        if resp.status != 200:
            body = resp.read(65536)
            raise ImageError(f"image {self.ref}: registry answered HTTP {resp.status} for blob "
                             f"{digest}{error_text(body)}")
        self.blobs += 1
        return _Counting(resp, self)

    def read_blob(self, digest: str) -> bytes:
        path = self.store.blob_path(digest)
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
        with self.blob(digest) as f:
            return f.read(MAX_MANIFEST * 16)


class _Counting:
    """An HTTP response body that counts what it delivers, as a context manager."""

    def __init__(self, resp: http.client.HTTPResponse, client: Client) -> None:
        self.resp = resp
        self.client = client

    def read(self, n: int = -1) -> bytes:
        data = self.resp.read(n if n is not None and n >= 0 else None)
        self.client.downloaded += len(data)
        return data

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resp.close()


# -- where blobs are known to be ------------------------------------------------------------

@dataclass(frozen=True)
class BlobLocations(Record):
    """``bloblocations/<hex>.json``: repositories (``registry/repository``) blob ``digest``
    was pulled from or pushed to, most recent last (containers/image's blob info cache
    ``RecordKnownLocation``)."""

    digest: str
    repositories: tuple[str, ...]


def _locations_path(store: ContentStore, digest: str) -> str:
    return store.path("bloblocations", check_digest(digest, "blob location")[7:] + ".json")


def known_locations(store: ContentStore, digest: str) -> tuple[str, ...]:
    """Where blob ``digest`` was seen (``registry/repository``), most recent first; none
    when unknown. Raises ``ImageError`` for an unreadable record (naming the file)."""
    found = read_record(BlobLocations, _locations_path(store, digest))
    return tuple(reversed(found.repositories)) if found is not None else ()


def record_location(store: ContentStore, digest: str, repository: str) -> None:
    """Remember that ``repository`` (``registry/repository``) holds blob ``digest`` (the
    last ``MAX_LOCATIONS`` are kept; a concurrent writer may win, as the record is a
    hint: a push checks a location with ``HEAD`` before it mounts from it)."""
    path = _locations_path(store, digest)
    found = read_record(BlobLocations, path)
    before = [r for r in (found.repositories if found else ()) if r != repository]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_record(path, BlobLocations(digest=digest, repositories=tuple(
        [*before, repository][-MAX_LOCATIONS:])))


def error_text(body: bytes) -> str:
    """`` (CODE: message; ...)`` of a registry's JSON error body (distribution spec "Error
    Codes"), ``""`` for any other body."""
    try:
        data = json.loads(body)
        msgs = [f"{e.get('code')}: {e.get('message')}" for e in data.get("errors") or []]
    except (ValueError, AttributeError):
        return ""
    return f" ({'; '.join(msgs)})" if msgs else ""


@dataclass(frozen=True)
class Pulled:
    """What one pull gave: ``image``, and for ``ref`` (normalized) how many blobs and bytes
    were downloaded (0 when every layer was in the store already) in how many seconds."""

    image: Image
    ref: str
    blobs_downloaded: int
    bytes_downloaded: int
    seconds: float


def pull(store: ContentStore, ref: str, insecure: Collection[str] = ()) -> Pulled:
    """Pull ``ref`` into ``store``; ``insecure`` are the registries (``host[:port]``)
    reached over plain http. Raises ``ImageError`` for a bad reference, an unreachable
    registry, missing or refused credentials, an unknown manifest, no image for this
    host's platform, and any digest mismatch."""
    parsed = Reference.parse(ref)
    client = Client(store, parsed, insecure)
    started = time.monotonic()
    reference = parsed.digest or parsed.tag or "latest"
    data, ctype = client.manifest(reference)
    digest = "sha256:" + layerfs.sha256_hex(data)
    if parsed.digest and digest != parsed.digest:
        raise ImageError(f"image {ref!r}: the registry's manifest has digest {digest}, not "
                         f"{parsed.digest}; refused")
    doc = parse_json(data, f"image {ref!r}: manifest")
    kind = doc.get("mediaType") or ctype
    if kind in INDEX_TYPES or "manifests" in doc:
        entry = pick_platform(doc.get("manifests") or [], f"image {ref!r}")
        want = check_digest(entry.get("digest"), f"image {ref!r}: index")
        data, ctype = client.manifest(want)
        got = "sha256:" + layerfs.sha256_hex(data)
        if got != want:
            raise ImageError(f"image {ref!r}: the platform manifest has digest {got}, not "
                             f"{want}; refused")
        doc = parse_json(data, f"image {ref!r}: manifest {want[:19]}")
        kind = doc.get("mediaType") or ctype
    if kind and kind not in MANIFEST_TYPES:
        raise ImageError(f"image {ref!r}: media type {kind!r} is not an image manifest")

    def progress(i: int, n: int, desc: dict[str, Any], cached: bool) -> None:
        size = desc.get("size") or 0
        state = "already here" if cached else "downloading"
        store.say(f"nsbox: pull {parsed} layer {i + 1}/{n} {str(desc.get('digest'))[:19]} "
                  f"{size / 1048576:.1f} MiB {state}")

    with store.using():
        image = import_manifest(store, doc, f"image {ref!r}", ref, [str(parsed)],
                                client.blob, client.read_blob, progress)  # type: ignore[arg-type]
        repository = f"{parsed.registry}/{parsed.repository}"
        for desc in [doc.get("config") or {}, *(doc.get("layers") or [])]:
            record_location(store, str(desc.get("digest")), repository)
    store.say(f"nsbox: pulled {parsed} ({client.blobs} blobs, "
              f"{client.downloaded / 1048576:.1f} MiB downloaded)")
    return Pulled(image=image, ref=str(parsed), blobs_downloaded=client.blobs,
                  bytes_downloaded=client.downloaded, seconds=time.monotonic() - started)

