"""Building a Containerfile as BuildKit's Dockerfile frontend does, into cached layers.

The dispatch follows moby/buildkit ``frontend/dockerfile/dockerfile2llb/convert.go``:

- Stages: ``FROM ref [AS name]``; only the target stage (the last, or ``target=``) and the
  stages it needs (its base stage, ``COPY --from=NAME|INDEX``) are built. A FROM that names
  an earlier stage starts from that stage; anything else is an image reference.
- ARG: ARGs before the first FROM are global and usable in FROM; in a stage, ``ARG NAME``
  takes the build arg, else its default (expanded), else the global value. Declared ARGs are
  in the environment of later ``RUN`` steps and of expansion, never in the image's ``Env``.
  BuildKit's predefined ARGs (``TARGETARCH``, ``BUILDPLATFORM``, ...) are global values;
  the proxy build args (``HTTP_PROXY``, ``no_proxy``, ...) reach every RUN without an ARG,
  and are neither recorded nor part of a cache key (Docker's "predefined ARGs").
- Variables expand (``shell_lex``) in ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER,
  VOLUME, WORKDIR and ARG defaults, from the step's environment (ENV values and ARGs so far).
- RUN, CMD and ENTRYPOINT in shell form run under the image's ``SHELL`` (default
  ``/bin/sh -c``); RUN runs as the ``USER`` so far, in the ``WORKDIR``; heredocs as BuildKit
  runs them (a lone ``<<EOF`` with a ``#!`` line is written to a file and executed).
- CMD, ENTRYPOINT (which resets a CMD not set in the same stage), EXPOSE, VOLUME,
  STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD, USER, LABEL, ENV, WORKDIR and MAINTAINER are
  recorded in the image config under Docker's names. ONBUILD triggers of the base run first.

Each layer step (RUN, COPY, ADD, a WORKDIR that makes its folder) has a cache key: the
parent chain (the layers so far, or for ``host`` the host's fingerprint), the instruction as
expanded, and what it depends on: for RUN the environment (declared ARGs included, so an ARG
changes the key only where it is in scope, as Docker's cache does), working directory, user,
network and shell; for COPY/ADD the content, modes and names of what it copies (``copy.py``).
A step whose key is in the store's cache is not run again; with a shared build cache
(ini ``nsbox_image_cache``, ``cache.py``) a step missing here is looked up in a registry
before it runs, and pushed there after. Steps are built under a file lock
on their key, so pytest processes that need the same new image at once (xdist workers) build
each step once; the others wait and reuse.

RUN executes in a box over the layers so far (network none unless ``--network=host``); its
read-write layer, copied into the store before the box is closed, becomes the layer.
"""
from __future__ import annotations

import copy as _copy_mod
import hashlib
import ipaddress
import json
import os
import posixpath
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from filelock import FileLock, Timeout

from ..errors import BoxError, CgroupError, ImageError
from ..images import layers as layerfs
from ..images.content import BUILD_LOCK_TIMEOUT, base_history, own_layers
from ..images.store import ImageStore
from ..kernel.arch import oci_arch, oci_platform
from ..kernel.fs import remove_tree
from ..model.defaults import DEFAULT_PATH, INIT_LAYER_RELPATHS
from ..model.image import Image
from ..model.image_records import StepCacheEntry
from ..model.spec import BoxSpec
from ..overlay.view import MergedView
from ..runtime.box import Box
from ..runtime.engine import Engine, default_engine
from . import containerfile as cf
from .cache import RegistryCache, for_store
from . import copy as cp
from .shell_lex import Lex, ShellLexError

CONTAINERFILES = ("Containerfile", "Dockerfile")
DEFAULT_SHELL = ["/bin/sh", "-c"]
# Docker's predefined ARGs: usable without an ARG line, kept out of history and cache keys.
PROXY_ARGS = frozenset(n for p in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY",
                                   "ALL_PROXY") for n in (p, p.lower()))
# ARGs BuildKit never puts into the environment (convert.go nonEnvArgs).
NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})
# Where a ``RUN <<EOF`` script starting with ``#!`` is put and run from. BuildKit mounts it
# at /dev/pipes/; a box's /dev is a read-only tmpfs, so it is bound here instead (the
# mount point lives in the box's init layer, never in the layer the step makes).
HEREDOC_DIR = "/.nsbox-pipes"
# moby/sys signal: signal_linux.go SignalMap.
_SIGNALS = frozenset(
    "ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV "
    "STKFLT STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ RTMIN "
    "RTMAX".split()) | {f"RTMIN+{i}" for i in range(1, 16)} | {f"RTMAX-{i}" for i in range(1, 15)}


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


#: The Containerfiles each store is building, outermost first (a FROM naming a fixtures
#: image builds it inside the build that names it; one naming itself is an error).
_BUILDING: weakref.WeakKeyDictionary[ImageStore, list[str]] = weakref.WeakKeyDictionary()


def build(store: ImageStore, path_or_name: str, *, tag: str | None = None,
          build_args: Mapping[str, str] | None = None, target: str | None = None) -> Image:
    """Build the Containerfile of a fixtures image name or a path into ``store``
    (``images.build.ImageBuilder.build``); ``build_args`` are the ARG values, ``target``
    picks a stage (default: the last). Raises ``ImageError``, also for a FROM that leads
    back to the Containerfile being built."""
    folder, path, name = locate(store, path_or_name)
    real = os.path.realpath(path)
    building = _BUILDING.setdefault(store, [])
    if real in building:
        raise ImageError(f"image {name!r}: FROM refers back to itself "
                         f"({' -> '.join([*building, real])})")
    building.append(real)
    engine = RunEngine(store)
    try:
        with store.using():
            return Builder(store, folder, path, tag or name, dict(build_args or {}), target,
                           engine=engine.get).run()
    finally:
        engine.close()
        building.pop()


class RunEngine:
    """The ``Engine`` the ``RUN`` boxes of one build run on: the default engine when
    ``store`` is its store (the plugin's and the command line's are), else one made over
    ``store`` at the first ``RUN`` step, whose owner lock ``close()`` releases."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self._made: Engine | None = None

    def get(self) -> Engine:
        engine = default_engine()
        if engine.store is self.store:
            return engine
        if self._made is None:
            self._made = Engine(dirs=self.store.dirs, rootdir=self.store.rootdir,
                                _store=self.store, builder=self.store.builder)
        return self._made

    def close(self) -> None:
        if self._made is not None:
            self._made.release_owner_lock()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _platform() -> tuple[str, str, str]:
    """(os/arch[/variant], arch, variant) of this host, as BuildKit formats platforms."""
    arch, variant = oci_platform()
    return "linux/" + arch + (f"/{variant}" if variant else ""), arch, variant or ""


class StageState:
    """One stage as it is built (BuildKit's ``dispatchState``): its layers, its image config
    (Docker's ``config`` section), history, the step environment and the ARGs in scope."""

    def __init__(self, stage: cf.Stage, index: int) -> None:
        self.stage = stage
        self.index = index
        self.label = stage.name or str(index)
        self.base = stage.base  # the FROM reference, variables expanded
        self.host = False
        self.ids: list[str] = []
        self.chain = ""
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.env: dict[str, str] = {}  # ENV values and declared ARGs: expansion and RUN
        self.args: list[tuple[str, str | None]] = []  # ARGs declared in scope
        self.author = ""
        self.cmd_set = False
        self.onbuild: list[str] = []  # this stage's own ONBUILD triggers
        self.done = False

    @property
    def image_env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out

    def set_env(self, key: str, value: str) -> None:
        env = self.image_env
        env[key] = value
        self.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        self.env[key] = value

    @property
    def workdir(self) -> str:
        return str(self.config.get("WorkingDir") or "/")

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


class Builder:
    """One build of the Containerfile at ``path`` (context ``folder``) into ``store`` as
    image ``name``; ``engine()`` gives the engine its ``RUN`` boxes run on."""

    def __init__(self, store: ImageStore, folder: str, path: str, name: str,
                 build_args: dict[str, str] | None = None, target: str | None = None, *,
                 engine: Callable[[], Engine] = default_engine) -> None:
        self.store = store
        self.engine = engine
        self.folder = folder
        self.path = path
        self.name = name
        self.build_args = dict(build_args or {})
        self.target = target
        self.ran = 0  # steps executed (not cached), for callers and tests
        # The shared build cache (ini nsbox_image_cache), None without one.
        self.remote: RegistryCache | None = for_store(store)
        self.used_args: set[str] = set()
        self.lex = Lex()
        self.states: list[StageState] = []
        self.global_args: dict[str, str] = {}

    # -- the whole build -----------------------------------------------------------------
    def run(self) -> Image:
        started = time.monotonic()
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageError(f"{self.path}: cannot read ({exc})") from None
        parsed = cf.parse(text, self.path)
        self.lex = Lex(parsed.escape)
        for warning in parsed.warnings:
            self.store.say(f"nsbox: {self.path}: warning: {warning} (empty continuation lines "
                           f"will become errors in a future Docker release)")
        self.states = [StageState(s, i) for i, s in enumerate(parsed.stages)]
        target = self._target(parsed)
        self.global_args = self._meta_args(parsed, target)
        for state in self.states:  # BuildKit expands every stage's base name up front
            state.base = self._expand_global(state.stage.base, state.stage)
        self._build_stage(target)
        unused = sorted(k for k in self.build_args if k not in self.used_args
                        and k not in PROXY_ARGS and k not in self.global_args)
        if unused:
            self.store.say(f"nsbox: image {self.name!r}: build arg(s) {', '.join(unused)} not "
                           f"consumed: no ARG declares them in {self.path}")
        image = self._record(target)
        took = time.monotonic() - started
        self.store.say(f"nsbox: image {self.name!r} ready ({len(image.layers)} layers, "
                       f"{self.ran} steps run, {took:.2f} s)")
        return image

    def _target(self, parsed: cf.Containerfile) -> StageState:
        if not self.target:
            return self.states[-1]
        for state in self.states:
            if state.stage.name and state.stage.name == self.target.lower():
                return state
        names = [s.stage.name for s in self.states if s.stage.name]
        raise ImageError(f"{self.path}: target stage {self.target!r} could not be found "
                         f"(stages: {', '.join(names) or 'none named; name one with FROM ... AS'})")

    def _meta_args(self, parsed: cf.Containerfile, target: StageState) -> dict[str, str]:
        """The global scope: BuildKit's ``defaultArgs`` then the ARGs before FROM
        (``buildMetaArgs``), build args overriding defaults."""
        platform, arch, variant = _platform()
        defaults = {"BUILDPLATFORM": platform, "BUILDOS": "linux", "BUILDOSVERSION": "",
                    "BUILDARCH": arch, "BUILDVARIANT": variant, "TARGETPLATFORM": platform,
                    "TARGETOS": "linux", "TARGETOSVERSION": "", "TARGETARCH": arch,
                    "TARGETVARIANT": variant, "TARGETSTAGE": target.stage.name or "default"}
        args = {k: self.build_args.get(k, v) for k, v in defaults.items()}
        for ins in parsed.meta_args:
            for key, default in ins.arg_pairs:
                if key in self.build_args:
                    args[key] = self.build_args[key]
                    self.used_args.add(key)
                elif default is not None:
                    args[key] = self._expand(default, args, ins)
        return args

    def _expand_global(self, text: str, stage: cf.Stage) -> str:
        try:
            result = self.lex.process(text, self.global_args)
        except ShellLexError as exc:
            raise cf.error(self.path, stage.line, "FROM", str(exc)) from None
        self.used_args |= result.matched
        if not result.result:
            raise cf.error(self.path, stage.line, "FROM", f"base name ({text}) should not be "
                                                           f"blank")
        return result.result

    def _expand(self, word: str, env: Mapping[str, str], ins: cf.Instruction) -> str:
        try:
            return self.lex.process_word(word, env)
        except ShellLexError as exc:
            raise cf.error(self.path, ins.line, ins.keyword, str(exc)) from None

    def _record(self, state: StageState) -> Image:
        config = self.store.make_config(parent=None, layer_ids=state.ids,
                                        env=state.image_env, workdir=state.workdir,
                                        labels=dict(state.config.get("Labels") or {}),
                                        history=state.history)
        section = {k: v for k, v in state.config.items() if v not in (None, [], {}, "", False)}
        section["Env"] = config["config"]["Env"]
        section["WorkingDir"] = state.workdir
        config["config"] = section
        if state.author:
            config["author"] = state.author
        return self.store.put_image(ref=self.name, base="host" if state.host else None,
                                    layer_ids=state.ids, config=config, tags=[self.name])

    # -- one stage -----------------------------------------------------------------------
    def _build_stage(self, state: StageState) -> None:
        if state.done:
            return
        stage = state.stage
        base_state = self._stage_named(state.base, before=state.index)
        triggers: list[str]
        if base_state is not None:
            self._build_stage(base_state)
            self._inherit(state, base_state)
            triggers = list(base_state.onbuild)
        else:
            image = self._from_image(state)
            self._start(state, image)
            triggers = list(state.config.get("OnBuild") or [])
        state.config.pop("OnBuild", None)  # triggers do not carry over
        if stage.platform:
            self._check_platform(stage)
        steps = [cf.parse_trigger(t, self.path, stage.line) for t in triggers]
        steps += stage.instructions
        for number, ins in enumerate(steps, start=2):
            problem = None
            try:
                self._dispatch(state, ins, number, len(steps) + 1)
            except (ImageError, BoxError, CgroupError) as exc:
                problem = str(exc)
                if problem.startswith(f"{self.path}:"):  # located already
                    raise
            if problem is not None:
                # Every build error names its place: what the copy code, the layer view
                # (a symlink loop), the store or a RUN step's box raised without one gets
                # it here, as an ImageError (a host that cannot run boxes stays a skip).
                raise ImageError(f"{self.path}:{ins.line}: {ins.keyword}: {problem}")
        state.done = True

    def _stage_named(self, name: str, before: int) -> StageState | None:
        """The stage a FROM names (as written, names are lower case), defined earlier."""
        for state in self.states[:before]:
            if state.stage.name and state.stage.name == name:
                return state
        return None

    def _check_platform(self, stage: cf.Stage) -> None:
        wanted = self._expand_global(stage.platform, stage)
        platform, arch, variant = _platform()
        parts = wanted.lower().split("/")
        ok = (parts[0] == "linux" and len(parts) in (2, 3)
              and oci_arch(parts[1]) == arch
              and (len(parts) == 2 or not variant or parts[2] == variant))
        if not ok:
            raise cf.error(self.path, stage.line, "FROM",
                           f"--platform={wanted}: this host builds {platform} only (boxes do "
                           f"not emulate other architectures)")

    def _from_image(self, state: StageState) -> Image:
        stage = state.stage
        ref = self._resolve_ref(state.base)
        shown = stage.text + (f" ({state.base})" if state.base != stage.base else "")
        try:
            return self.store.get(ref)
        except ImageError as exc:
            raise ImageError(f"{self.path}:{stage.line}: {shown}: {exc}") from None

    def _resolve_ref(self, ref: str) -> str:
        for prefix in ("oci:", "docker-archive:", "oci-archive:"):
            if ref.startswith(prefix) and not ref[len(prefix):].startswith("/"):
                # Relative archive paths start at the Containerfile's folder.
                return prefix + os.path.join(self.folder, ref[len(prefix):])
        return ref

    def _start(self, state: StageState, base: Image) -> None:
        """A stage from an image: its layers, config, environment and user."""
        state.host = base.from_host_os
        state.ids = own_layers(base)
        state.history = base_history(base)
        state.chain = _key("base", self.store.host_fingerprint() if state.host
                           else list(base.layers))
        state.config = _copy_mod.deepcopy(dict((base.config or {}).get("config") or {}))
        state.author = str((base.config or {}).get("author") or "")
        env = dict(base.env)
        if "PATH" not in env:
            env["PATH"] = DEFAULT_PATH  # BuildKit: "make sure that PATH is always set"
        state.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        state.config["WorkingDir"] = base.workdir or "/"
        if base.labels:
            state.config["Labels"] = dict(base.labels)
        state.env = dict(env)

    def _inherit(self, state: StageState, base: StageState) -> None:
        """A stage from an earlier stage: everything it had, its ARGs too (``init``)."""
        state.host = base.host
        state.ids = list(base.ids)
        state.chain = base.chain
        state.config = _copy_mod.deepcopy(base.config)
        state.history = [dict(h) for h in base.history]
        state.env = dict(base.env)
        state.args = list(base.args)
        state.author = base.author

    def image_of(self, state: StageState, *, with_args: bool = False) -> Image:
        """The image of ``state``'s steps so far (not recorded): what RUN boxes start from
        (``with_args``: declared ARGs in its environment) and what ``--from`` reads."""
        config = _copy_mod.deepcopy(state.config)
        env = dict(state.env) if with_args else state.image_env
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
        return self.store.assemble(ref=f"{self.name} (building stage {state.label})",
                                   image_id="sha256:" + state.chain,
                                   base="host" if state.host else None, ids=list(state.ids),
                                   config={"config": config})

    # -- one instruction -----------------------------------------------------------------
    def _dispatch(self, state: StageState, ins: cf.Instruction, number: int,
                  total: int) -> None:
        keyword = ins.keyword
        env = state.env
        if keyword in ("RUN", "COPY", "ADD", "WORKDIR"):
            self._layer_instruction(state, ins, number, total)
            return
        if keyword == "ENV":
            # All pairs expand first, so ``ENV A=2 B=$A`` gives B the old A.
            pairs = [(self._expand(k, env, ins), self._expand(v, env, ins))
                     for k, v in ins.pairs]
            for key, value in pairs:
                state.set_env(key, value)
        elif keyword == "LABEL":
            labels = dict(state.config.get("Labels") or {})
            for k, v in ins.pairs:
                labels[self._expand(k, env, ins)] = self._expand(v, env, ins)
            state.config["Labels"] = labels
        elif keyword == "ARG":
            self._arg(state, ins)
        elif keyword == "USER":
            state.config["User"] = self._expand(ins.args[0], env, ins)
        elif keyword in ("CMD", "ENTRYPOINT"):
            cmd = ins.cmdline
            if cmd is not None and ins.prepend_shell:
                cmd = [*state.shell, " ".join(cmd)]
            if keyword == "CMD":
                state.config["Cmd"] = cmd
                state.config["ArgsEscaped"] = True
                state.cmd_set = True
            else:
                state.config["Entrypoint"] = cmd
                if not state.cmd_set:
                    state.config.pop("Cmd", None)
        elif keyword == "SHELL":
            state.config["Shell"] = list(ins.args)
        elif keyword == "HEALTHCHECK":
            state.config["Healthcheck"] = dict(ins.health or {})
        elif keyword == "EXPOSE":
            ports = dict(state.config.get("ExposedPorts") or {})
            for raw in ins.args:
                try:
                    words = self.lex.process_words(raw, env)
                except ShellLexError as exc:
                    raise cf.error(self.path, ins.line, keyword, str(exc)) from None
                for word in words:
                    for port in self._ports(word, ins):
                        ports[port] = {}
            state.config["ExposedPorts"] = ports
        elif keyword == "VOLUME":
            volumes = dict(state.config.get("Volumes") or {})
            for raw in ins.args:
                volume = self._expand(raw, env, ins)
                if volume == "":
                    raise cf.error(self.path, ins.line, keyword, "VOLUME specified can not be "
                                                                 "an empty string")
                volumes[volume] = {}
            state.config["Volumes"] = volumes
        elif keyword == "STOPSIGNAL":
            signal = self._expand(ins.args[0], env, ins)
            if not _valid_signal(signal):
                raise cf.error(self.path, ins.line, keyword, f"invalid signal: {signal}")
            state.config["StopSignal"] = signal
        elif keyword == "ONBUILD":
            state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), ins.expression]
            state.onbuild.append(ins.expression)
        elif keyword == "MAINTAINER":
            state.author = ins.args[0]
        state.history.append({"created_by": ins.text, "empty_layer": True})

    def _arg(self, state: StageState, ins: cf.Instruction) -> None:
        """BuildKit ``dispatchArg``: the build arg, else the default (expanded), else the
        global value; set values join the step environment (not the image's Env)."""
        for key, default in ins.arg_pairs:
            value: str | None
            if key in self.build_args:
                value = self.build_args[key]
                self.used_args.add(key)
            elif default is not None:
                value = self._expand(default, state.env, ins)
            else:
                value = self.global_args.get(key)
            if value is not None and key not in NON_ENV_ARGS:
                state.env[key] = value
            state.args.append((key, value))

    def _ports(self, raw: str, ins: cf.Instruction) -> list[str]:
        try:
            return expose_ports(raw)
        except ValueError as exc:
            raise cf.error(self.path, ins.line, "EXPOSE", f"invalid port {raw!r}: {exc}"
                           ) from None

    # -- layer steps ---------------------------------------------------------------------
    def _layer_instruction(self, state: StageState, ins: cf.Instruction, number: int,
                           total: int) -> None:
        where = f"{self.path}:{ins.line}"
        keyword = ins.keyword
        if keyword == "WORKDIR":
            path = self._expand(ins.args[0], state.env, ins)
            if not path:
                raise cf.error(self.path, ins.line, keyword, "cannot normalize nothing")
            workdir = posixpath.normpath(posixpath.join("/", state.workdir, path))
            workdir = "/" + workdir.lstrip("/")
            state.config["WorkingDir"] = workdir
            if workdir == "/":
                state.history.append({"created_by": ins.text, "empty_layer": True})
                return
            lower = self.image_of(state).layer_dirs
            _parts, found = MergedView(lower).resolve(workdir)
            if found is not None and stat.S_ISDIR(found.st.st_mode):
                state.history.append({"created_by": ins.text, "empty_layer": True})
                return
            owner = (cp.resolve_chown(state.user, MergedView(lower), f"{where}: WORKDIR")
                     if state.user else None)
            key = _key(state.chain, "WORKDIR", workdir, owner)

            def mkdir(tmp: str) -> None:
                cp.make_dirs(lower=lower, layer=tmp, path=workdir, owner=owner)

            self._layer_step(state, number, total, ins, key, mkdir)
        elif keyword == "RUN":
            self._run_step(state, ins, number, total, where)
        else:
            plan = self._copy_plan(state, ins, where)
            self._layer_step(state, number, total, ins, _key(state.chain, keyword, plan.key),
                             plan.apply)

    def _copy_plan(self, state: StageState, ins: cf.Instruction, where: str) -> cp.CopyPlan:
        """COPY/ADD as one ``copy.plan``: flags, sources and destination expanded as
        BuildKit's ``Expand`` does; heredoc sources chomped (``<<-``) and, unless their name
        was quoted, expanded with quotes left alone (``ExpandRaw``)."""
        keyword = ins.keyword
        env = state.env
        flags = ins.flags
        contents: list[tuple[str, str]] = []
        for doc in ins.contents:
            data = doc.data()
            if doc.expand:
                try:
                    data = Lex("\\", skip_process_quotes=True).process_word(data, env)
                except ShellLexError as exc:
                    raise cf.error(self.path, ins.line, keyword, str(exc)) from None
            contents.append((doc.name, data))
        options: dict[str, Any] = {
            "lower": self.image_of(state).layer_dirs, "workdir": state.workdir,
            "chown": self._expand(flags["chown"], env, ins) if flags.get("chown") else None,
            "chmod": self._expand(flags["chmod"], env, ins) if flags.get("chmod") else None,
            "exclude": [self._expand(e, env, ins) for e in flags.get("exclude") or ()],
            "parents": bool(flags.get("parents")), "link": bool(flags.get("link")),
            "contents": contents, "where": where}
        if keyword == "ADD":
            if "unpack" in flags:
                options["unpack"] = bool(flags["unpack"])
            if flags.get("checksum"):
                options["checksum"] = self._expand(flags["checksum"], env, ins)
        source = (self._from_source(state, ins, flags["from"]) if flags.get("from")
                  else cp.Source.context(self.folder, self.path))
        return cp.plan(keyword, source, [self._expand(s, env, ins) for s in ins.sources],
                       self._expand(ins.dest, env, ins), **options)

    def _from_source(self, state: StageState, ins: cf.Instruction, ref: str) -> cp.Source:
        """``--from``: an earlier stage (by name, or index), else an image reference."""
        try:
            if self.lex.process_word(ref, {}) != ref:
                raise ShellLexError("")
        except ShellLexError:
            raise cf.error(self.path, ins.line, ins.keyword,
                           f"--from={ref}: variable expansion is not supported for --from; "
                           f"define a new stage with FROM using ARG from global scope as a "
                           f"workaround") from None
        other: StageState | None = None
        if ref.isdigit():
            index = int(ref)
            if index >= len(self.states):
                raise cf.error(self.path, ins.line, ins.keyword, f"invalid stage index {index}")
            other = self.states[index]
        else:
            other = next((s for s in self.states if s.stage.name == ref.lower()), None)
        if other is not None:
            if other.index >= state.index:
                raise cf.error(self.path, ins.line, ins.keyword,
                               f"cannot copy from stage {ref!r}, it needs to be defined before "
                               f"current stage {state.label!r}")
            self._build_stage(other)
            return cp.Source.image(self.image_of(other), f"stage {other.label!r}")
        try:
            image = self.store.get(self._resolve_ref(ref))
        except ImageError as exc:
            raise ImageError(f"{self.path}:{ins.line}: {ins.keyword} --from={ref}: {exc}"
                             ) from None
        return cp.Source.image(image, f"image {ref!r}")

    def _layer_step(self, state: StageState, number: int, total: int, ins: cf.Instruction,
                    key: str, make: Callable[[str], None]) -> None:
        store = self.store
        stage = f" stage {state.label!r}" if len(self.states) > 1 else ""
        label = f"image {self.name!r}{stage} step {number}/{total}: {_short(ins.text)}"
        hit = store.cached_step(key)
        remote = self.remote
        if hit is None:
            os.makedirs(store.dirs.locks, exist_ok=True)
            lock = FileLock(os.path.join(store.dirs.locks, f"step-{key}.lock"),
                            timeout=BUILD_LOCK_TIMEOUT)
            try:
                with lock:
                    hit = store.cached_step(key)
                    pulled = remote.lookup(key) if hit is None and remote else None
                    if pulled is not None and remote is not None:
                        hit = pulled
                        store.cache_step(key, StepCacheEntry(layer=hit, created_by=ins.text,
                                                             image=self.name))
                        store.say(f"nsbox: {label} (from the image cache {remote.name})")
                        store.log(f"pulled image={self.name} step={number}/{total} "
                                  f"{ins.keyword} key={key[:16]} layer={hit[:16]} "
                                  f"from={remote.name}")
                    elif hit is None:
                        store.say(f"nsbox: {label}")
                        started = time.monotonic()
                        tmp = store.new_tmp("step")
                        try:
                            make(tmp)
                        except BaseException:
                            remove_tree(tmp)
                            raise
                        hit = store.add_layer(tmp, created_by=ins.text)
                        store.cache_step(key, StepCacheEntry(layer=hit, created_by=ins.text,
                                                             image=self.name))
                        self.ran += 1
                        store.log(f"build image={self.name} step={number}/{total} "
                                  f"{ins.keyword} key={key[:16]} layer={hit[:16]} "
                                  f"took={time.monotonic() - started:.2f}s")
                    if remote is not None:
                        remote.export(key, hit, ins.text)
            except Timeout:
                raise ImageError(f"{self.path}:{ins.line}: {ins.keyword}: another process held "
                                 f"the build lock of this step for {BUILD_LOCK_TIMEOUT:.0f} s"
                                 ) from None
        else:
            store.say(f"nsbox: {label} (cached)")
            if remote is not None:
                remote.export(key, hit, ins.text)
        state.ids.append(hit)
        state.chain = _key(state.chain, hit)
        state.history.append({"created": store.layer_created(hit), "created_by": ins.text})

    # -- RUN -----------------------------------------------------------------------------
    def _run_step(self, state: StageState, ins: cf.Instruction, number: int, total: int,
                  where: str) -> None:
        flags = ins.flags
        for flag in ("mount", "device"):
            if flags.get(flag):
                raise cf.error(self.path, ins.line, "RUN",
                               f"--{flag} is not supported by pytest-nsbox; COPY what the step "
                               f"needs into the image instead")
        network = "host" if flags.get("network") == "host" else "none"
        privileged = flags.get("security") == "insecure"
        args = list(ins.cmdline or [])
        script: tuple[str, str] | None = None
        if ins.heredocs:
            if len(args) != 1 or not ins.prepend_shell:
                raise cf.error(self.path, ins.line, "RUN", f"parsing produced an invalid run "
                                                           f"command: {args}")
            lone = cf.parse_heredoc(args[0])
            if lone is not None:
                data = ins.heredocs[0].data()
                if data.startswith("#!"):
                    script = (ins.heredocs[0].name, data)
                    args = [f"{HEREDOC_DIR}/{ins.heredocs[0].name}"]
                else:
                    args = [data]
            else:
                args = [args[0] + "".join(f"\n{h.content}{h.name}" for h in ins.heredocs)]
        if ins.prepend_shell:
            argv = [*state.shell, " ".join(args)]
        else:
            argv = args
            if not argv:
                raise cf.error(self.path, ins.line, "RUN", "the exec form needs a command, "
                                                           "e.g. RUN [\"ls\", \"-l\"]")
        key = _key(state.chain, "RUN", argv, script, network, privileged,
                   sorted(state.env.items()), state.workdir, state.user)
        proxies = {k: v for k, v in self.build_args.items() if k in PROXY_ARGS}
        self._layer_step(state, number, total, ins, key,
                         lambda tmp: self._run(state, tmp, ins, argv, network, privileged,
                                               script, proxies, where))

    def _run(self, state: StageState, tmp: str, ins: cf.Instruction, argv: list[str],
             network: str, privileged: bool, script: tuple[str, str] | None,
             proxies: dict[str, str], where: str) -> None:
        store = self.store
        ref = f"nsbox-build-{secrets.token_hex(6)}"
        pipes = None
        try:
            keys: dict[str, Any] = {"image": ref, "network": network}
            if privileged:
                keys["privileged"] = True
            if script is not None:
                pipes = store.new_tmp("pipes")
                path = os.path.join(pipes, script[0])
                with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(script[1])
                os.chmod(path, 0o755)
                os.chmod(pipes, 0o755)
                keys["binds"] = {pipes: f"{HEREDOC_DIR}:ro"}
            spec = BoxSpec.from_kwargs(keys, source="RUN")
            with store.named(ref, self.image_of(state, with_args=True)):
                box = Box.from_spec(spec, engine=self.engine(), label=f"build-{self.name}")
            try:
                result = box.run(argv, timeout=store.run_timeout, cwd=state.workdir,
                                 user=state.user or None, env=proxies or None)
                if result.returncode != 0 or result.timed_out:
                    what = (f"timed out after {store.run_timeout:.0f} s" if result.timed_out
                            else f"exited with status {result.returncode}")
                    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-10:]
                    detail = ("; its output ended with:\n  " + "\n  ".join(tail)) if tail else ""
                    raise ImageError(f"{where}: {_short(ins.text, 200)} {what}{detail}")
                layerfs.copy_tree(box.dirs.upper, tmp, skip=INIT_LAYER_RELPATHS)
            finally:
                box.close()
        finally:
            if pipes is not None:
                remove_tree(pipes)


def expose_ports(raw: str) -> list[str]:
    """``EXPOSE`` port specs as Docker records them: ``80`` -> ``["80/tcp"]``,
    ``7000-7002/udp`` -> three ports, ``[ip:][host:]port[/proto]`` keeps the container port
    (dockerfile2llb convert_expose.go ``parsePort``). Raises ValueError."""
    parts = raw.split(":")
    if len(parts) == 1:
        ip, host, port = "", "", parts[0]
    elif len(parts) == 2:
        ip, host, port = "", parts[0], parts[1]
    else:
        ip, host, port = ":".join(parts[:-2]), parts[-2], parts[-1]
    port, _, proto = port.partition("/")
    if port == "":
        raise ValueError("no port specified")
    if proto.lower() not in ("", "tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    proto = proto or "tcp"
    if ip:
        address = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"invalid IP address: {ip}") from None
    start, end = _port_range(port, "containerPort")
    if host:
        hstart, hend = _port_range(host, "hostPort")
        if end - start != hend - hstart and end != start:
            raise ValueError(f"invalid ranges specified for container and host Ports: {port} "
                             f"and {host}")
    return [f"{p}/{proto.lower()}" for p in range(start, end + 1)]


def _port_range(text: str, what: str) -> tuple[int, int]:
    start_s, dash, end_s = text.partition("-")

    def number(s: str) -> int:
        if not s or not s.lstrip("+-").isdigit() or not s.isascii():
            raise ValueError(f"invalid {what}: {text}")
        n = int(s)
        if not 0 <= n <= 65535:
            raise ValueError(f"invalid {what}: {text} (value out of range (0-65535))")
        return n

    start = number(start_s)
    if not dash or start_s == end_s:
        return start, start
    end = number(end_s)
    if end < start:
        raise ValueError(f"invalid {what}: {text} (invalid port range)")
    return start, end


def _valid_signal(text: str) -> bool:
    """moby/sys signal ``ParseSignal``: a non-zero number, or a name with or without SIG."""
    try:
        return int(text, 10) != 0
    except ValueError:
        pass
    name = text.upper()
    return (name[3:] if name.startswith("SIG") else name) in _SIGNALS


def _short(text: str, limit: int = 80) -> str:
    text = text.split("\n", 1)[0] if "\n" in text and len(text) > limit else text
    return text if len(text) <= limit else text[:limit - 3] + "..."
