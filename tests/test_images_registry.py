"""Registry pulls: Debian's ``docker-registry`` on 127.0.0.1 (anonymous and htpasswd basic
auth, images pushed by ``skopeo``), and a small in-process registry for Bearer token
challenges, manifest lists and redirects. All traffic stays on loopback.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images.refs import Reference, looks_like_registry_ref
from pytest_nsbox.images.registry import credentials
from pytest_nsbox.kernel.arch import oci_platform as host_platform
from test_images import Fresh, _can_run

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")
needs_registry = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and shutil.which("htpasswd")),
    reason="docker-registry, skopeo and apache2-utils (Debian packages; ci/setup installs them)")
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """``docker-registry serve`` on 127.0.0.1 with its own config and storage."""

    def __init__(self, root: Path, users: dict[str, str] | None = None,
                 auth: list[str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.name = f"127.0.0.1:{self.port}"
        self.storage = root / "storage"
        lines = ["version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
                 f"    rootdirectory: {self.storage}", "http:",
                 f"  addr: 127.0.0.1:{self.port}"]
        if users:
            htpasswd = root / "htpasswd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(["htpasswd", "-B", "-b"] + (["-c"] if i == 0 else []) +
                               [str(htpasswd), user, password], check=True, capture_output=True,
                               timeout=30)
            lines += ["auth:", "  htpasswd:", "    realm: nsbox-test", f"    path: {htpasswd}"]
        lines += auth or []  # other ``auth:`` config lines (token auth)
        (root / "config.yml").write_text("\n".join(lines) + "\n")
        self.log = open(root / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("docker-registry did not start: "
                                       + (root / "registry.log").read_text()) from exc
                time.sleep(0.05)

    def push(self, layout: Path, tag: str, repo: str, creds: str | None = None) -> str:
        ref = f"{self.name}/{repo}"
        cmd = ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
               f"docker://{ref}"]
        if creds:
            cmd[2:2] = ["--dest-creds", creds]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return ref

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    f = Fresh(tmp_path / "client")
    yield f
    f.close()


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A two-layer image (busybox + one file) as an OCI layout, tag ``v1``."""
    maker = Fresh(tmp_path / "maker")
    try:
        maker.image_dir("pushed", "FROM busybox\nRUN echo from-registry > /hello\n")
        path = tmp_path / "layout"
        maker.store.build("pushed").save(str(path), tag="v1")
        return path
    finally:
        maker.close()


def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str, user: str,
                  password: str) -> Path:
    conf = tmp_path / "docker"
    conf.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (conf / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(conf))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return conf / "config.json"


@needs_registry
def test_anonymous_pull_runs_and_a_second_pull_downloads_nothing(
        tmp_path: Path, layout: Path, fresh: Fresh) -> None:
    registry = Registry(tmp_path / "reg")
    try:
        ref = registry.push(layout, "v1", "nsbox/hello:v1")
        with pytest.raises(ImageError, match="nsbox_insecure_registries"):
            fresh.store.get(ref)  # plain http only for registries listed as insecure
        fresh.store.insecure_registries = [registry.name]
        image = fresh.store.get(ref)
        assert fresh.store.last_pull.blobs_downloaded == 3  # config + two layers
        layer_lines = [line for line in fresh.lines if " layer " in line]
        assert len(layer_lines) == 2 and all("downloading" in line for line in layer_lines)
        with fresh.box(ref) as box:
            assert box.read_text("/hello") == "from-registry\n"
            assert box.run("echo ok", check=True).stdout == "ok\n"
        fresh.lines.clear()
        again = fresh.store.pull(ref)
        assert again.id == image.id
        assert fresh.store.last_pull.blobs_downloaded == 0
        assert fresh.store.last_pull.bytes_downloaded == 0
        assert all("already here" in line for line in fresh.lines if " layer " in line)
        digest_ref = f"{registry.name}/nsbox/hello@{_manifest_digest(registry, 'nsbox/hello')}"
        assert fresh.store.pull(digest_ref).id == image.id
        with pytest.raises(ImageError, match="not found in registry"):
            fresh.store.pull(f"{registry.name}/nsbox/hello:nope")
    finally:
        registry.close()


def _manifest_digest(registry: Registry, repo: str) -> str:
    req = urllib.request.Request(
        f"http://{registry.name}/v2/{repo}/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return "sha256:" + hashlib.sha256(resp.read()).hexdigest()


@needs_registry
def test_basic_auth_pull_and_wrong_or_missing_credentials(
        tmp_path: Path, layout: Path, fresh: Fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(tmp_path / "reg", users={"alice": "s3cret"})
    try:
        ref = registry.push(layout, "v1", "team/app:v1", creds="alice:s3cret")
        fresh.store.insecure_registries = [registry.name]
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        with pytest.raises(ImageError, match=r"needs credentials.*; run `docker login"):
            fresh.store.pull(ref)
        path = docker_config(tmp_path, monkeypatch, registry.name, "alice", "wrong")
        with pytest.raises(ImageError) as info:
            fresh.store.pull(ref)
        assert f"authentication failed for user 'alice' (credentials from {path})" in \
            str(info.value)
        docker_config(tmp_path, monkeypatch, registry.name, "alice", "s3cret")
        image = fresh.store.pull(ref)
        with fresh.box(ref) as box:
            assert box.read_text("/hello") == "from-registry\n"
        # containers' auth.json wins over docker's config.
        docker_config(tmp_path, monkeypatch, registry.name, "alice", "wrong")
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"auths": {f"http://{registry.name}/v2/": {
            "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
        assert credentials(registry.name) == ("alice", "s3cret", str(authfile))
        assert fresh.store.pull(ref).id == image.id
    finally:
        registry.close()


@needs_registry
def test_a_tampered_blob_is_rejected_by_digest(tmp_path: Path, layout: Path,
                                               fresh: Fresh) -> None:
    registry = Registry(tmp_path / "reg")
    try:
        ref = registry.push(layout, "v1", "nsbox/tampered:v1")
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                              .read_text())
        top = manifest["layers"][-1]["digest"]
        blob = registry.blob_file(top)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        fresh.store.insecure_registries = [registry.name]
        with pytest.raises(ImageError) as info:
            fresh.store.pull(ref)
        text = str(info.value)
        assert top[:19] in text and ("changed or damaged" in text
                                     or "not a readable layer" in text), text
        assert os.listdir(fresh.store.path("tmp")) == []
        assert fresh.store.tags() == {}
    finally:
        registry.close()


# -- an in-process registry with Bearer tokens, an index and redirects -------------------

class FakeRegistry(ThreadingHTTPServer):
    """Serves one OCI layout read-only as repository ``ns/app``, behind Bearer tokens."""

    daemon_threads = True

    def __init__(self, layout: Path, user: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.layout = layout
        self.user, self.password = user, password
        self.name = f"127.0.0.1:{self.server_address[1]}"
        self.token = "token-" + os.urandom(8).hex()
        self.hits: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def blob(self, digest: str) -> bytes | None:
        path = self.layout / "blobs/sha256" / digest.split(":", 1)[-1]
        return path.read_bytes() if path.is_file() else None

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.hits.append(self.path)
        if self.path.startswith("/token"):
            want = "Basic " + base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
            if self.headers.get("Authorization") != want or "scope=repository%3Ans%2Fapp%3Apull" \
                    not in self.path:
                return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad"}]}')
            return self._send(200, json.dumps({"token": srv.token}).encode())
        if self.path.startswith("/_blobs/"):
            data = srv.blob(self.path.rsplit("/", 1)[1])
            return self._send(200, data or b"", "application/octet-stream")
        if self.headers.get("Authorization") != f"Bearer {srv.token}":
            realm = f"http://{srv.name}/token"
            return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",'
                                    f'scope="repository:ns/app:pull"'})
        parts = self.path.split("/")
        if self.path.startswith("/v2/ns/app/manifests/"):
            reference = parts[-1]
            if reference.startswith("sha256:"):
                data = srv.blob(reference)
            else:
                data = (srv.layout / "index.json").read_bytes()  # the tag names the index
            if data is None:
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            kind = json.loads(data).get("mediaType") or "application/vnd.oci.image.index.v1+json"
            return self._send(200, data, kind)
        if self.path.startswith("/v2/ns/app/blobs/"):
            return self._send(307, headers={"Location": f"/_blobs/{parts[-1]}"})
        return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')


def test_bearer_token_auth_index_and_redirects(tmp_path: Path, layout: Path, fresh: Fresh,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Make the layout's index a multi-platform one: a bogus s390x entry first.
    index = json.loads((layout / "index.json").read_text())
    arch, _ = host_platform()
    entry = dict(index["manifests"][0])
    entry["platform"] = {"os": "linux", "architecture": arch}
    bogus = dict(entry, platform={"os": "linux", "architecture": "s390x"},
                 digest="sha256:" + "0" * 64)
    index["manifests"] = [bogus, entry]
    (layout / "index.json").write_text(json.dumps(index))
    server = FakeRegistry(layout, "bob", "pw")
    try:
        fresh.store.insecure_registries = [server.name]
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        ref = f"{server.name}/ns/app:v1"
        with pytest.raises(ImageError, match="needs credentials"):
            fresh.store.pull(ref)
        docker_config(tmp_path, monkeypatch, server.name, "bob", "pw")
        image = fresh.store.pull(ref)
        with fresh.box(ref) as box:
            assert box.read_text("/hello") == "from-registry\n"
        assert any(h.startswith("/token?") for h in server.hits)
        assert any(h.startswith("/_blobs/") for h in server.hits)
        assert not any("0000000000" in h for h in server.hits)  # the s390x entry not fetched
        assert image.ref == ref
    finally:
        server.close()


def test_references_are_parsed_like_docker() -> None:
    assert Reference.parse("busybox") == Reference("docker.io", "library/busybox", "latest",
                                                    None)
    assert Reference.parse("127.0.0.1:5000/a/b:v1") == Reference("127.0.0.1:5000", "a/b", "v1",
                                                                  None)
    digest = "sha256:" + "a" * 64
    assert Reference.parse(f"localhost/x@{digest}") == Reference("localhost", "x", None, digest)
    assert str(Reference.parse("docker.io/x/y")) == "docker.io/x/y:latest"
    assert looks_like_registry_ref("reg.example/x") and looks_like_registry_ref("localhost/x")
    assert not looks_like_registry_ref("busybox") and not looks_like_registry_ref("team/app")
    with pytest.raises(ImageError, match="not a repository name"):
        Reference.parse("reg.example/UPPER")
    with pytest.raises(ImageError, match="not a sha256 digest"):
        Reference.parse("reg.example/x@sha256:short")
