"""Building a Containerfile into layers: one layer per RUN and COPY, cached by content.

Each layer step has a cache key: the parent chain (the layers so far, or for ``host`` the
host's fingerprint), the instruction as expanded, the environment and working directory it
runs with, and for COPY the content, modes and names of what it copies (not mtimes).
A step whose key is in the store's cache is not run again; a second build with no change
runs nothing. Steps are built under a file lock on their key, so pytest processes that need
the same new image at once (xdist workers) build each step once; the others wait and reuse.

RUN executes in a box over the layers so far (network none unless ``--network=host``); its
read-write layer, copied into the store before the box is closed, becomes the layer.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import posixpath
import secrets
import stat
import time
from typing import Any

from filelock import FileLock, Timeout

from ..errors import ImageError
from . import containerfile as cf
from . import layers as layerfs
from .image import Image
from .store import BUILD_LOCK_TIMEOUT, ImageStore, base_history, own_layers, read_json, write_json

CONTAINERFILES = ("Containerfile", "Dockerfile")
# The init layer's files: written per box, never part of a layer (as with docker commit).
INIT_FILES = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf"})


def locate(store: ImageStore, path_or_name: str) -> tuple[str, str, str]:
    """``(context folder, Containerfile path, image name)`` for a name or a path."""
    fixture = store.fixture_path(path_or_name)
    if fixture is not None:
        return fixture, os.path.join(fixture, "Containerfile"), path_or_name
    path = store.abspath(path_or_name)
    if os.path.isdir(path):
        for name in CONTAINERFILES:
            if os.path.isfile(os.path.join(path, name)):
                return path, os.path.join(path, name), os.path.basename(path.rstrip("/"))
        raise ImageError(f"image {path_or_name!r}: {path} holds no Containerfile")
    if os.path.isfile(path):
        folder = os.path.dirname(path)
        return folder, path, os.path.basename(folder)
    names = store.fixture_names()
    known = f" (fixtures images: {', '.join(names)})" if names else ""
    raise ImageError(f"image {path_or_name!r}: neither a fixtures image in "
                     f"{store.fixtures_dir()}{known} nor a Containerfile or folder holding one")


def build(store: ImageStore, path_or_name: str, tag: str | None = None) -> Image:
    folder, path, name = locate(store, path_or_name)
    real = os.path.realpath(path)
    if real in store._building:
        chain = " -> ".join([*store._building, real])
        raise ImageError(f"image {name!r}: FROM refers back to itself ({chain})")
    store._building.append(real)
    try:
        with store.using():
            return Builder(store, folder, path, tag or name).run()
    finally:
        store._building.pop()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Builder:
    def __init__(self, store: ImageStore, folder: str, path: str, name: str) -> None:
        self.store = store
        self.folder = folder
        self.path = path
        self.name = name
        self.ran = 0  # steps executed (not cached), for callers and tests

    def run(self) -> Image:
        started = time.monotonic()
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageError(f"{self.path}: cannot read ({exc})") from None
        steps = cf.parse(text, self.path)
        base = self._from(steps[0])
        self.base = base
        self.host = base.host_root
        self.ids = own_layers(base)
        self.env = dict(base.env)
        self.workdir = base.workdir or "/"
        self.labels = dict(base.labels)
        self.history = base_history(base)
        self.chain = _key("base", self.store.host_fingerprint() if self.host else list(base.layers))
        total = len(steps)
        for number, ins in enumerate(steps[1:], start=2):
            where = f"{self.path}:{ins.line}"
            if ins.keyword == "ENV":
                for key, value in cf.key_values(ins, self.env, self.path):
                    self.env[key] = value
                self.history.append({"created_by": ins.text, "empty_layer": True})
            elif ins.keyword == "LABEL":
                for key, value in cf.key_values(ins, self.env, self.path):
                    self.labels[key] = value
                self.history.append({"created_by": ins.text, "empty_layer": True})
            elif ins.keyword == "WORKDIR":
                wd = cf.expand(ins.args, self.env, self.path, ins.line, ins.keyword)
                self.workdir = posixpath.normpath(posixpath.join(self.workdir, wd))
                _parts, found = layerfs.MergedView(self.current().layer_dirs).resolve(self.workdir)
                if found is not None and stat.S_ISDIR(found.st.st_mode):
                    self.history.append({"created_by": ins.text, "empty_layer": True})
                    continue
                key = _key(self.chain, "WORKDIR", self.workdir)
                self._layer_step(number, total, ins, key, lambda tmp: self._mkdir(tmp))
            elif ins.keyword == "RUN":
                network = ins.flags.get("network", "none")
                key = _key(self.chain, "RUN", ins.argv or ins.args, network,
                           sorted(self.env.items()), self.workdir)
                self._layer_step(number, total, ins, key,
                                 lambda tmp, ins=ins, network=network, where=where:
                                 self._run(tmp, ins, network, where))
            elif ins.keyword == "COPY":
                plan = self._copy_plan(ins)
                key = _key(self.chain, "COPY", plan["key"])
                self._layer_step(number, total, ins, key,
                                 lambda tmp, plan=plan: self._copy(tmp, plan))
        config = self.store.make_config(parent=self.base, layer_ids=self.ids, env=self.env,
                                        workdir=self.workdir, labels=self.labels,
                                        history=self.history)
        image = self.store.put_image(ref=self.name, base="host" if self.host else None,
                                     layer_ids=self.ids, config=config, tags=[self.name])
        took = time.monotonic() - started
        self.store.say(f"nsbox: image {self.name!r} ready ({len(image.layers)} layers, "
                       f"{self.ran} steps run, {took:.2f} s)")
        return image

    # -- FROM ----------------------------------------------------------------------------
    def _from(self, ins: cf.Instruction) -> Image:
        ref = cf.expand(ins.args, {}, self.path, ins.line, "FROM")
        for prefix in ("oci:", "docker-archive:", "oci-archive:"):
            if ref.startswith(prefix) and not ref[len(prefix):].startswith("/"):
                # Relative archive paths start at the Containerfile's folder.
                ref = prefix + os.path.join(self.folder, ref[len(prefix):])
        try:
            return self.store.get(ref)
        except ImageError as exc:
            raise ImageError(f"{self.path}:{ins.line}: FROM {ins.args}: {exc}") from None

    def current(self) -> Image:
        """The image of the steps so far (not recorded; RUN boxes start from it)."""
        return self.store.assemble(ref=f"{self.name} (building)", image_id="sha256:" + self.chain,
                                   base="host" if self.host else None, ids=list(self.ids),
                                   config={"config": {"Env": [f"{k}={v}" for k, v in
                                                              self.env.items()],
                                                      "WorkingDir": self.workdir}})

    # -- one layer step ------------------------------------------------------------------
    def _layer_step(self, number: int, total: int, ins: cf.Instruction, key: str,
                    make: Any) -> None:
        store = self.store
        cache_path = store.path("cache", f"{key}.json")
        label = f"image {self.name!r} step {number}/{total}: {_short(ins.text)}"
        hit = self._cached(cache_path)
        if hit is None:
            os.makedirs(store.path("cache"), exist_ok=True)
            os.makedirs(store.dirs.locks, exist_ok=True)
            lock = FileLock(os.path.join(store.dirs.locks, f"step-{key}.lock"),
                            timeout=BUILD_LOCK_TIMEOUT)
            try:
                with lock:
                    hit = self._cached(cache_path)
                    if hit is None:
                        store.say(f"nsbox: {label}")
                        started = time.monotonic()
                        tmp = store.new_tmp("step")
                        try:
                            make(tmp)
                        except BaseException:
                            layerfs_remove(tmp)
                            raise
                        hit = store.add_layer(tmp, created_by=ins.text)
                        write_json(cache_path, {"layer": hit, "created_by": ins.text,
                                                "image": self.name})
                        self.ran += 1
                        store.log(f"build image={self.name} step={number}/{total} "
                                  f"{ins.keyword} key={key[:16]} layer={hit[:16]} "
                                  f"took={time.monotonic() - started:.2f}s")
            except Timeout:
                raise ImageError(f"{self.path}:{ins.line}: {ins.keyword}: another process held "
                                 f"the build lock of this step for {BUILD_LOCK_TIMEOUT:.0f} s"
                                 ) from None
        else:
            store.say(f"nsbox: {label} (cached)")
        self.ids.append(hit)
        self.chain = _key(self.chain, hit)
        info = store.layer_info(hit)
        self.history.append({"created": info.get("created") or "1970-01-01T00:00:00Z",
                             "created_by": ins.text})

    def _cached(self, cache_path: str) -> str | None:
        data = read_json(cache_path)
        if data and os.path.isdir(self.store.path("layers", data["layer"])):
            return str(data["layer"])
        return None

    # -- RUN -----------------------------------------------------------------------------
    def _run(self, tmp: str, ins: cf.Instruction, network: str, where: str) -> None:
        from ..runtime.box import Box
        from ..spec import BoxSpec

        store = self.store
        ref = f"nsbox-build-{secrets.token_hex(6)}"
        store._cache[ref] = self.current()
        try:
            spec = BoxSpec.from_kwargs({"image": ref, "network": network}, source="RUN")
            box = Box.from_spec(spec, host=box_host(store), label=f"build-{self.name}")
            try:
                cmd: list[str] | str = ins.argv if ins.argv is not None else ins.args
                result = box.run(cmd, timeout=store.run_timeout, cwd=self.workdir)
                if result.returncode != 0 or result.timed_out:
                    what = (f"timed out after {store.run_timeout:.0f} s" if result.timed_out
                            else f"exited with status {result.returncode}")
                    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-10:]
                    detail = ("; its output ended with:\n  " + "\n  ".join(tail)) if tail else ""
                    raise ImageError(f"{where}: RUN {_short(ins.args, 200)} {what}{detail}")
                layerfs.copy_tree(box.dirs.upper, tmp, skip=INIT_FILES)
            finally:
                box.close()
        finally:
            store._cache.pop(ref, None)

    # -- WORKDIR -------------------------------------------------------------------------
    def _mkdir(self, tmp: str) -> None:
        view = layerfs.MergedView(self.current().layer_dirs)
        parts, _found = view.resolve(self.workdir)
        _make_parents(tmp, view, parts, chown=None)

    # -- COPY ----------------------------------------------------------------------------
    def _copy_plan(self, ins: cf.Instruction) -> dict[str, Any]:
        where = f"{self.path}:{ins.line}"
        argv = [cf.expand(a, self.env, self.path, ins.line, "COPY") for a in ins.argv or []]
        *srcs, dest = argv
        context = os.path.realpath(self.folder)
        sources: list[str] = []
        for src in srcs:
            pattern = src.lstrip("/") or "."
            if any(c in pattern for c in "*?["):
                matches = sorted(glob.glob(pattern, root_dir=context))
                if not matches:
                    raise ImageError(f"{where}: COPY {src}: matches no file in {self.folder}")
            else:
                matches = [pattern]
            for match in matches:
                full = os.path.realpath(os.path.join(context, match))
                if full != context and not full.startswith(context + os.sep):
                    raise ImageError(f"{where}: COPY {src}: outside the image folder "
                                     f"{self.folder}; copy only what is in it")
                if not os.path.exists(full):
                    raise ImageError(f"{where}: COPY {src}: no such file in {self.folder}")
                sources.append(full)
        if not dest.startswith("/"):
            dest = posixpath.join(self.workdir, dest)
        many = len(sources) > 1
        if many and not dest.endswith("/"):
            raise ImageError(f"{where}: COPY with more than one source needs a destination "
                             f"folder ending in '/'; e.g. `COPY a b /app/`")
        chown = self._chown(ins.flags["chown"], where) if "chown" in ins.flags else None
        chmod = int(ins.flags["chmod"], 8) if "chmod" in ins.flags else None
        h = hashlib.sha256()
        for src in sources:
            _hash_tree(h, src, os.path.basename(src))
        return {"sources": sources, "dest": dest, "chown": chown, "chmod": chmod,
                "key": [dest, chown, chmod, h.hexdigest(),
                        [os.path.relpath(s, context) for s in sources]]}

    def _chown(self, spec: str, where: str) -> tuple[int, int]:
        user, _, group = spec.partition(":")
        view = layerfs.MergedView(self.current().layer_dirs)

        def lookup(name: str, file: str, what: str) -> int:
            if name.isdigit():
                return int(name)
            data = (view.read_bytes(file) or b"").decode("utf-8", "replace")
            for line in data.splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[0] == name:
                    return int(fields[2])
            raise ImageError(f"{where}: COPY --chown={spec}: no {what} {name!r} in the image's "
                             f"{file}; use a number, e.g. --chown=1000:1000")

        uid = lookup(user, "/etc/passwd", "user")
        if group:
            gid = lookup(group, "/etc/group", "group")
        elif user.isdigit():
            gid = uid
        else:
            gid = uid
            data = (view.read_bytes("/etc/passwd") or b"").decode("utf-8", "replace")
            for line in data.splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[0] == user and fields[3].isdigit():
                    gid = int(fields[3])
        return uid, gid

    def _copy(self, tmp: str, plan: dict[str, Any]) -> None:
        view = layerfs.MergedView(self.current().layer_dirs)
        dest: str = plan["dest"]
        chown = plan["chown"]
        sources: list[str] = plan["sources"]
        into_dir = dest.endswith("/") or len(sources) > 1
        if not into_dir:
            _parts, found = view.resolve(dest)
            into_dir = found is not None and stat.S_ISDIR(found.st.st_mode)
        for src in sources:
            if os.path.isdir(src):
                parts, _ = view.resolve(dest)
                target = _make_parents(tmp, view, parts, chown=chown)
                _copy_into(src, target, chown, plan["chmod"])
            else:
                if into_dir:
                    parts, _ = view.resolve(dest)
                    parts = (*parts, os.path.basename(src))
                else:
                    dparts, _ = view.resolve(posixpath.dirname(dest.rstrip("/")) or "/")
                    parts = (*dparts, posixpath.basename(dest.rstrip("/")))
                parent = _make_parents(tmp, view, parts[:-1], chown=chown)
                _copy_one(src, os.path.join(parent, parts[-1]), chown, plan["chmod"])


def layerfs_remove(path: str) -> None:
    from ..state import remove_tree

    remove_tree(path)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _hash_tree(h: Any, path: str, name: str) -> None:
    """Names, kinds, modes and contents (not mtimes) of what COPY copies."""
    st = os.lstat(path)
    h.update(f"{name}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
    if stat.S_ISDIR(st.st_mode):
        for child in sorted(os.listdir(path)):
            _hash_tree(h, os.path.join(path, child), f"{name}/{child}")
    elif stat.S_ISLNK(st.st_mode):
        h.update(os.readlink(path).encode("utf-8", "surrogateescape"))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    h.update(b"\0")


def _make_parents(tmp: str, view: layerfs.MergedView, parts: tuple[str, ...],
                  chown: tuple[int, int] | None) -> str:
    """Directories ``parts`` inside the new layer ``tmp``: those the image has keep its
    owner, mode and mtime (so the merged directory looks unchanged); new ones are 0755,
    owned by root or by ``--chown``."""
    path = tmp
    for prefix, found in view.walk_missing(parts):
        path = os.path.join(path, prefix[-1])
        if os.path.isdir(path):
            continue
        os.mkdir(path, 0o755)
        if found is not None and stat.S_ISDIR(found.st.st_mode):
            os.chown(path, found.st.st_uid, found.st.st_gid)
            os.chmod(path, stat.S_IMODE(found.st.st_mode))
            os.utime(path, ns=(found.st.st_atime_ns, found.st.st_mtime_ns))
        elif found is not None:
            raise ImageError(f"COPY: /{'/'.join(prefix)} is a file in the image, not a folder")
        else:
            uid, gid = chown or (0, 0)
            os.chown(path, uid, gid)
    return path


def _copy_one(src: str, dst: str, chown: tuple[int, int] | None, chmod: int | None) -> None:
    st = os.lstat(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    else:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
    uid, gid = chown or (0, 0)
    os.chown(dst, uid, gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, chmod if chmod is not None else stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_into(src_dir: str, dst_dir: str, chown: tuple[int, int] | None,
               chmod: int | None) -> None:
    for name in sorted(os.listdir(src_dir)):
        s = os.path.join(src_dir, name)
        d = os.path.join(dst_dir, name)
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            if not os.path.isdir(d):
                os.mkdir(d, 0o755)
            _copy_into(s, d, chown, chmod)
            uid, gid = chown or (0, 0)
            os.chown(d, uid, gid)
            os.chmod(d, chmod if chmod is not None else stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            _copy_one(s, d, chown, chmod)
        # sockets, fifos and devices in the image folder are not copied


def box_host(store: ImageStore) -> Any:
    """The ``Host`` whose boxes use ``store`` (the configured one when it does)."""
    from ..runtime.host import Host, default_host

    host = default_host()
    if host.store is store:
        return host
    if store._host_obj is None:
        store._host_obj = Host(dirs=store.dirs, rootdir=store.rootdir, _store=store)
    return store._host_obj
