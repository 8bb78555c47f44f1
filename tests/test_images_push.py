"""``python -m pytest_nsbox images push REF DEST``: the OCI distribution spec's push against
Debian's ``docker-registry`` on 127.0.0.1 (anonymous, htpasswd basic auth, and its Bearer
token auth with a token server here), seen through a recording proxy on loopback;
``skopeo`` reads what was pushed.

References: opencontainers/distribution-spec ``spec.md`` ("Pushing blobs": POST then PUT,
chunked PATCH with ``Content-Range``, "Mounting a blob from another repository",
"Pushing Manifests", the 416 answer of an out-of-order chunk) and containers/image
``docker/docker_image_dest.go`` (``TryReusingBlobWithOptions``: ``HEAD`` first, then a
mount from a known location; ``PutBlobWithOptions``; ``uploadManifest``).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images import push
from test_images import Fresh
from test_images_registry import Registry, docker_config, needs_registry

pytestmark = [needs_registry, pytest.mark.timeout(300)]

#: A layer of random bytes (does not compress), so a small chunk size makes several PATCHes.
APP = ("FROM busybox\n"
       "RUN head -c 300000 /dev/urandom > /blob && echo pushed > /hello\n"
       "COPY note /note\n")


class Recorder(ThreadingHTTPServer):
    """A forwarding proxy on 127.0.0.1 in front of ``target`` (``host:port``): records each
    request as ``(method, path, headers)``; with ``refuse_chunk`` it answers the second
    PATCH of an upload 416 once, with the ``Range`` the registry last accepted."""

    daemon_threads = True

    def __init__(self, target: str, refuse_chunk: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = target
        self.name = f"127.0.0.1:{self.server_address[1]}"
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.refuse_chunk = refuse_chunk
        self.last_range = ""
        self.patches = 0
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def methods(self, prefix: str = "") -> list[str]:
        return [f"{m} {p.split('?')[0]}" for m, p, _h in self.seen if p.startswith(prefix)]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Forward(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        srv.seen.append((self.command, self.path, dict(self.headers)))
        if self.command == "PATCH":
            srv.patches += 1
            if srv.refuse_chunk and srv.patches == 2:
                srv.refuse_chunk = False
                self.send_response(416)
                self.send_header("Range", srv.last_range)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        conn = http.client.HTTPConnection(srv.target, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = srv.name  # the registry's Locations then point back here
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if self.command == "PATCH" and resp.status == 202:
            srv.last_range = resp.getheader("Range") or ""
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815


def cli(store: Fresh, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_nsbox", "--store", store.dirs.store,
                           *args], capture_output=True, text=True, timeout=240, check=False,
                          cwd=str(Path(store.store.images_dir or ".").parent),
                          env={**os.environ, **(env or {})})


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def maker(tmp_path: Path) -> Iterator[Fresh]:
    """A store holding fixtures image ``app`` (busybox, a random 300 kB layer, a file)."""
    f = Fresh(tmp_path / "maker")
    f.image_dir("app", APP, note="a note\n")
    f.store.build("app")
    yield f
    f.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "reg")
    yield reg
    reg.close()


def layer_digests(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                          .read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def test_push_posts_then_puts_each_blob_a_second_push_sends_none_and_skopeo_reads_it(
        maker: Fresh, registry: Registry, tmp_path: Path) -> None:
    """distribution-spec "Pushing a blob monolithically" (POST then PUT ``?digest=``) and
    "Pushing Manifests"; "Checking if content exists in the registry" (HEAD) lets a second
    push send no blob, as containers/image ``tryReusingExactBlob`` does. The gzip'd layers
    are made once and kept in the store (``LayerInfo.blob``), so both pushes send the same
    digests, which ``skopeo inspect`` and ``skopeo copy`` to an OCI layout read back."""
    proxy = Recorder(registry.name)
    try:
        dest = f"{proxy.name}/ns/app:v1"
        first = cli(maker, "images", "push", "app", dest, "--insecure-registry", proxy.name)
        assert first.returncode == 0, first.stderr
        digest = first.stdout.split()[-1]
        assert first.stdout == f"pushed {dest} {digest}\n"
        uploads = [(m, p, h) for m, p, h in proxy.seen if "/blobs/uploads/" in p]
        assert [m for m, _p, _h in uploads] == ["POST", "PUT"] * 4  # 3 layers + config
        assert all("digest=sha256%3A" in p for m, p, _h in uploads if m == "PUT")
        assert "PATCH" not in [m for m, _p, _h in proxy.seen]
        assert proxy.methods()[-1] == "PUT /v2/ns/app/manifests/v1"
        manifest_put = proxy.seen[-1][2]
        assert manifest_put["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
        assert " layer 1/3 " in first.stderr and "uploaded" in first.stderr

        # The layers were compressed once, and kept: their blobs are in the store.
        image = maker.store.get("app")
        kept = [maker.store.layer_info(lid).blob for lid in image.layers]
        assert all(b is not None and os.path.exists(maker.store.blob_path(b.digest))
                   for b in kept)

        proxy.seen.clear()
        again = cli(maker, "images", "push", "app", dest, "--insecure-registry", proxy.name)
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[-1] == digest
        assert set(proxy.methods()) == {"HEAD /v2/ns/app/blobs/" + b.digest for b in kept} | {
            f"HEAD /v2/ns/app/blobs/{_config_digest(registry, 'ns/app')}",
            "PUT /v2/ns/app/manifests/v1"}
        assert "0 blobs uploaded, 0 mounted, 4 already there" in again.stderr
        assert not [line for line in again.stderr.splitlines() if line.endswith(" uploaded")]

        info = json.loads(skopeo("inspect", "--tls-verify=false",
                                 f"docker://{registry.name}/ns/app:v1").stdout)
        assert info["Digest"] == digest
        assert info["Layers"] == [b.digest for b in kept]
        layout = tmp_path / "copied"
        skopeo("copy", "--src-tls-verify=false", f"docker://{registry.name}/ns/app:v1",
               f"oci:{layout}:v1")
        assert layer_digests(layout) == [b.digest for b in kept]
    finally:
        proxy.close()


def _config_digest(registry: Registry, repo: str) -> str:
    conn = http.client.HTTPConnection(registry.name, timeout=10)
    conn.request("GET", f"/v2/{repo}/manifests/v1",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    data = json.loads(conn.getresponse().read())
    conn.close()
    return str(data["config"]["digest"])


def test_blobs_known_in_another_repository_are_mounted_not_uploaded(
        maker: Fresh, registry: Registry, tmp_path: Path) -> None:
    """distribution-spec "Mounting a blob from another repository"
    (``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``, ``201``), tried for a
    blob known to be there after ``HEAD`` finds it, as containers/image
    ``TryReusingBlobWithOptions`` does. Locations are remembered from pushes and from
    pulls: a second store that pulled the image mounts it too."""
    maker.store.insecure_registries = [registry.name]
    image = maker.store.get("app")
    push.push(maker.store, image, f"{registry.name}/team/app:v1", [registry.name])
    proxy = Recorder(registry.name)
    try:
        # Through the proxy the registry is another name: remember the blobs there too.
        push.push(maker.store, image, f"{proxy.name}/team/app:v1", [proxy.name])
        proxy.seen.clear()
        pushed = push.push(maker.store, image, f"{proxy.name}/other/app:v2", [proxy.name])
        assert (pushed.mounted, pushed.uploaded, pushed.present) == (4, 0, 0)
        mounts = [p for m, p, _h in proxy.seen if m == "POST"]
        assert len(mounts) == 4
        for path in mounts:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            assert query["from"] == ["team/app"] and query["mount"][0].startswith("sha256:")
        assert not [m for m, _p, _h in proxy.seen if m in ("PATCH", "PUT")
                    and "/blobs/" in _p]

        # A store that pulled the image knows where its blobs are, and mounts them.
        puller = Fresh(tmp_path / "puller")
        try:
            puller.store.insecure_registries = [proxy.name]
            pulled = puller.store.pull(f"{proxy.name}/team/app:v1")
            proxy.seen.clear()
            again = push.push(puller.store, pulled, f"{proxy.name}/copy/app:v3", [proxy.name])
            assert (again.mounted, again.uploaded) == (4, 0)
            assert again.digest == pushed.digest  # the blobs as pulled, the same manifest
            with puller.box(f"{proxy.name}/copy/app:v3") as box:
                assert box.read_text("/hello") == "pushed\n"
        finally:
            puller.close()
        layout = tmp_path / "mounted"
        skopeo("copy", "--src-tls-verify=false", f"docker://{registry.name}/other/app:v2",
               f"oci:{layout}:v2")
        assert len(layer_digests(layout)) == 3
    finally:
        proxy.close()


def test_a_large_blob_goes_up_in_ordered_patch_chunks_and_resumes_after_416(
        maker: Fresh, registry: Registry, tmp_path: Path) -> None:
    """distribution-spec "Pushing a blob in chunks": ``POST`` (``Content-Length: 0``),
    ``PATCH`` chunks with inclusive ``Content-Range: <start>-<end>`` in order, each to the
    ``Location`` of the last answer, then ``PUT <location>?digest=`` with no body; a chunk
    out of order is answered ``416`` with the ``Range`` the registry holds, and the upload
    resumes after it. The blob arrives whole (``skopeo copy`` checks its digest)."""
    proxy = Recorder(registry.name, refuse_chunk=True)
    try:
        dest = f"{proxy.name}/ns/chunked:v1"
        result = cli(maker, "images", "push", "app", dest, "--chunk-size", "64k",
                     env={"NSBOX_INSECURE_REGISTRIES": f"10.0.0.1:5000, {proxy.name}"})
        assert result.returncode == 0, result.stderr
        patches = [h["Content-Range"] for m, _p, h in proxy.seen if m == "PATCH"]
        assert len(patches) >= 6  # the 300 kB random layer, and busybox's, in 64 KiB chunks
        assert patches[0] == "0-65535" and patches[1] == "65536-131071"
        assert patches[2] == "65536-131071"  # sent again after the 416
        starts = [int(r.split("-")[0]) for r in patches]
        ends = [int(r.split("-")[1]) for r in patches]
        assert all(e - s + 1 <= 65536 for s, e in zip(starts, ends))
        closing = [p for m, p, h in proxy.seen if m == "PUT" and "/blobs/uploads/" in p
                   and h.get("Content-Length") == "0"]
        assert closing and all("digest=sha256%3A" in p for p in closing)
        layout = tmp_path / "chunked"
        skopeo("copy", "--src-tls-verify=false", f"docker://{registry.name}/ns/chunked:v1",
               f"oci:{layout}:v1")
        image = maker.store.get("app")
        assert layer_digests(layout) == [maker.store.layer_info(lid).blob.digest
                                         for lid in image.layers]
    finally:
        proxy.close()


def test_basic_auth_push_uses_the_pull_credentials(
        maker: Fresh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as a pull reads them (docker's ``config.json`` ``auths``), sent after
    the registry's ``Basic`` challenge (distribution's htpasswd auth); none, or a wrong
    password, is one line naming the user and the file."""
    registry = Registry(tmp_path / "authreg", users={"alice": "s3cret"})
    try:
        dest = f"{registry.name}/team/app:v1"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nothing"))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        result = cli(maker, "images", "push", "app", dest, "--insecure-registry", registry.name)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith(
            f"nsbox: registry {registry.name}: team/app needs credentials")
        path = docker_config(tmp_path, monkeypatch, registry.name, "alice", "wrong")
        result = cli(maker, "images", "push", "app", dest, "--insecure-registry", registry.name)
        assert result.returncode == 1
        assert f"authentication failed for user 'alice' (credentials from {path})" in \
            result.stderr
        docker_config(tmp_path, monkeypatch, registry.name, "alice", "s3cret")
        result = cli(maker, "images", "push", "app", dest, "--insecure-registry", registry.name)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "alice:s3cret",
                                 f"docker://{dest}").stdout)
        assert info["Digest"] == result.stdout.split()[-1]
        assert len(info["Layers"]) == 3
    finally:
        registry.close()


def test_bad_destinations_and_unpushable_images_are_one_line_errors(
        maker: Fresh, tmp_path: Path) -> None:
    """What a push refuses, each as one ``nsbox:`` line and exit status 1 (2 for bad
    usage, as argparse reports it): an image based on ``host`` (its bottom layer is this
    machine's ``/``), a destination without registry or with a digest (distribution-spec
    "Pushing Manifests": the reference is a tag), a registry that is not there, an
    insecure registry given as a URL, and a chunk size that is no size."""
    maker.image_dir("onhost", "FROM host\nENV A=1\n")
    cases = [
        (("onhost", "127.0.0.1:1/x:v1"), "based on 'host'"),
        (("app", "app:v1"), "push destination 'app:v1': name its registry"),
        (("app", "127.0.0.1:1/x@sha256:" + "a" * 64), "a digest cannot be pushed to"),
        (("app", "127.0.0.1:1/x:v1", "--insecure-registry", "127.0.0.1:1"),
         "cannot reach 127.0.0.1:1 over http"),
        (("app", "127.0.0.1:1/x:v1", "--insecure-registry", "http://127.0.0.1:1"),
         "--insecure-registry 'http://127.0.0.1:1': not a registry; use HOST:PORT"),
    ]
    for args, text in cases:
        result = cli(maker, "images", "push", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("nsbox: ") and text in last, (args, last)
        assert "Traceback" not in result.stderr
    result = cli(maker, "images", "push", "app", "127.0.0.1:1/x", "--chunk-size", "lots")
    assert result.returncode == 2 and "--chunk-size: invalid _size value" not in result.stderr
    assert "'lots': not a size" in result.stderr
    with pytest.raises(ImageError, match="chunk size 0"):
        push.Pusher(maker.store, push.destination("127.0.0.1:1/x"), chunk_size=0)



# -- Bearer tokens: docker-registry's token auth, with a token server here -----------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(ThreadingHTTPServer):
    """A token server for ``docker-registry``'s ``auth: token`` (Docker's token
    authentication spec, distribution ``registry/auth/token``): checks ``Basic``
    credentials, grants each requested scope's actions the user may have (``rights``:
    user -> (password, actions)), and signs an RS256 JWT with ``openssl`` whose ``x5c``
    holds the certificate the registry trusts (``rootcertbundle``)."""

    daemon_threads = True

    def __init__(self, root: Path, rights: dict[str, tuple[str, set[str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.key, self.cert = root / "token.key", root / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(self.key), "-out", str(self.cert), "-days", "2", "-subj",
                        "/CN=nsbox-test-token"], check=True, capture_output=True, timeout=60)
        self.der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                                  check=True, capture_output=True, timeout=60).stdout
        self.rights = rights
        self.asked: list[tuple[str, list[str]]] = []  # (user, scopes) of each token
        self.realm = f"http://127.0.0.1:{self.server_address[1]}/token"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def token(self, user: str, scopes: list[str]) -> str:
        allowed = self.rights[user][1]
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.der).decode()]}
        claims = {"iss": "nsbox-test", "sub": user, "aud": "nsbox-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing.encode(), capture_output=True, check=True,
                                   timeout=60).stdout
        return f"{signing}.{_b64url(signature)}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        auth = self.headers.get("Authorization", "")
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":") \
            if auth.startswith("Basic ") else ("", "", "")
        if user not in srv.rights or srv.rights[user][0] != password:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
            self.send_response(401)
        else:
            scopes = query.get("scope", [])
            srv.asked.append((user, scopes))
            body = json.dumps({"token": srv.token(user, scopes)}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def token_registry(root: Path, tokens: TokenServer) -> Registry:
    """``docker-registry serve`` on 127.0.0.1 behind ``tokens`` (``auth: token``)."""
    return Registry(root, auth=["auth:", "  token:", f"    realm: {tokens.realm}",
                                "    service: nsbox-registry", "    issuer: nsbox-test",
                                f"    rootcertbundle: {tokens.cert}"])


def test_bearer_token_push_asks_for_push_and_for_the_mount_source(
        maker: Fresh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's token authentication (distribution ``docs/spec/auth/token.md``) as
    containers/image asks for it: the destination's ``pull,push`` scope
    (``newDockerClient``), plus ``pull`` on a mount's source repository
    (``TryReusingBlobWithOptions``' ``extraScope``), against ``docker-registry``'s token
    auth. An account granted only ``pull`` gets a one-line error naming the user, its
    file and the rights it lacks; a wrong password, one naming the user and the file."""
    tokens = TokenServer(tmp_path, {"bob": ("pw", {"pull", "push"}),
                                    "reader": ("pw2", {"pull"})})
    registry = token_registry(tmp_path / "tokenreg", tokens)
    try:
        image = maker.store.get("app")
        docker_config(tmp_path, monkeypatch, registry.name, "bob", "pw")
        first = push.push(maker.store, image, f"{registry.name}/team/app:v1", [registry.name])
        assert first.uploaded == 4
        assert tokens.asked[0] == ("bob", ["repository:team/app:pull,push"])
        tokens.asked.clear()
        second = push.push(maker.store, image, f"{registry.name}/other/app:v1",
                           [registry.name])
        assert (second.mounted, second.uploaded) == (4, 0)
        assert ("bob", ["repository:other/app:pull,push", "repository:team/app:pull"]) in \
            tokens.asked
        info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "bob:pw",
                                 f"docker://{registry.name}/other/app:v1").stdout)
        assert info["Digest"] == second.digest == first.digest

        path = docker_config(tmp_path, monkeypatch, registry.name, "reader", "pw2")
        with pytest.raises(ImageError) as denied:
            push.push(maker.store, image, f"{registry.name}/team/app:v2", [registry.name])
        assert str(denied.value).startswith(
            f"registry {registry.name}: user 'reader' (credentials from {path}) is not "
            f"granted repository:team/app:")
        assert "the account needs pull and push rights on team/app" in str(denied.value)
        docker_config(tmp_path, monkeypatch, registry.name, "bob", "nope")
        with pytest.raises(ImageError, match="authentication failed for user 'bob'"):
            push.push(maker.store, image, f"{registry.name}/team/app:v3", [registry.name])
    finally:
        registry.close()
        tokens.close()
