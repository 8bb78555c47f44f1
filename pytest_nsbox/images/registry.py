"""Pulling from a registry: the distribution API v2 (``/v2/<name>/manifests|blobs/...``).

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
from typing import Any

from ..errors import ImageError
from ..model.image import Image
from . import layers as layerfs
from .content import ContentStore
from .oci import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX,
                  OCI_MANIFEST, import_manifest, parse_json, pick_platform)
from .refs import DOCKER_HUB, HUB_ALIASES, Reference, check_digest

TIMEOUT = 30.0
MAX_REDIRECTS = 5
MAX_MANIFEST = 4 << 20
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
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


class Client:
    """The distribution API of ``ref``'s registry, over https unless its host (or
    ``host:port``) is in ``insecure``; blobs already in ``store`` are read from there."""

    def __init__(self, store: ContentStore, ref: Reference,
                 insecure: Collection[str] = ()) -> None:
        self.store = store
        self.ref = ref
        host = ref.api_host
        self.scheme = "http" if (host in insecure or ref.registry in insecure) else "https"
        self.creds = credentials(ref.registry)
        self.auth: str | None = None
        self.downloaded = 0
        self.blobs = 0

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT)

    def _send(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET ``url``, following redirects (credentials never leave the registry host)."""
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
                conn.request("GET", path, headers=hdrs)
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
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location") or ""
                resp.read()
                conn.close()
                url = urllib.parse.urljoin(url, location)
                continue
            return resp
        raise ImageError(f"registry {self.ref.registry}: more than {MAX_REDIRECTS} redirects")

    def get(self, path: str, accept: str | None = None) -> http.client.HTTPResponse:
        url = f"{self.scheme}://{self.ref.api_host}{path}"
        headers = {"User-Agent": "pytest-nsbox", "Accept": accept or "*/*"}
        tried_auth = False
        while True:
            if self.auth:
                headers["Authorization"] = self.auth
            resp = self._send(url, headers)
            if resp.status != 401:
                return resp
            challenge = resp.getheader("WWW-Authenticate") or ""
            body = resp.read(65536)
            if tried_auth:
                raise self._denied(body)
            tried_auth = True
            self.auth = self._authorize(challenge, body)

    def _denied(self, body: bytes) -> ImageError:
        detail = _errors(body)
        if self.creds:
            user, _pw, path = self.creds
            return ImageError(f"registry {self.ref.registry}: authentication failed for user "
                              f"{user!r} (credentials from {path}){detail}; check the user "
                              f"name and password (docker login {self.ref.registry})")
        return ImageError(f"registry {self.ref.registry}: {self.ref.repository} needs "
                          f"credentials{detail}; run `docker login {self.ref.registry}` or put "
                          f"them in $REGISTRY_AUTH_FILE")

    def _authorize(self, challenge: str, body: bytes) -> str:
        scheme, params = _challenge(challenge)
        if scheme == "basic":
            if not self.creds:
                raise self._denied(body)
            user, password, _path = self.creds
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if scheme == "bearer":
            return "Bearer " + self._token(params)
        raise ImageError(f"registry {self.ref.registry}: unsupported authentication "
                         f"{challenge!r} (Basic and Bearer are supported)")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise ImageError(f"registry {self.ref.registry}: a Bearer challenge without realm")
        query = {"service": params.get("service", "")} if params.get("service") else {}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
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
        resp = self._send(url, headers)
        body = resp.read(1 << 20)
        if resp.status in (401, 403):
            raise self._denied(body)
        if resp.status != 200:
            raise ImageError(f"registry {self.ref.registry}: token server {parts.netloc} "
                             f"answered HTTP {resp.status}{_errors(body)}")
        data = parse_json(body, f"token from {realm}")
        token = data.get("token") or data.get("access_token")
        if not token:
            raise ImageError(f"registry {self.ref.registry}: the token server's answer holds no "
                             f"token")
        return str(token)

    # -- API calls -----------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str]:
        resp = self.get(f"/v2/{self.ref.repository}/manifests/{reference}", ACCEPT)
        body = resp.read(MAX_MANIFEST + 1)
        if resp.status == 404:
            raise ImageError(f"image {self.ref}: not found in registry {self.ref.registry} "
                             f"(no manifest {reference!r}){_errors(body)}")
        if resp.status != 200:
            raise ImageError(f"image {self.ref}: registry {self.ref.registry} answered HTTP "
                             f"{resp.status} for manifest {reference!r}{_errors(body)}")
        if len(body) > MAX_MANIFEST:
            raise ImageError(f"image {self.ref}: manifest larger than 4 MiB; refused")
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        return body, ctype

    def blob(self, digest: str) -> _Counting:
        resp = self.get(f"/v2/{self.ref.repository}/blobs/{digest}")
        if resp.status != 200:
            body = resp.read(65536)
            raise ImageError(f"image {self.ref}: registry answered HTTP {resp.status} for blob "
                             f"{digest}{_errors(body)}")
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


def _errors(body: bytes) -> str:
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
    store.say(f"nsbox: pulled {parsed} ({client.blobs} blobs, "
              f"{client.downloaded / 1048576:.1f} MiB downloaded)")
    return Pulled(image=image, ref=str(parsed), blobs_downloaded=client.blobs,
                  bytes_downloaded=client.downloaded, seconds=time.monotonic() - started)

