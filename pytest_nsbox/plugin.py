"""The pytest side: options, the ``sandbox`` marker, fixtures, reports.

Data flows one way: marker kwargs are validated into a ``BoxSpec`` at collection (errors
stashed and raised at setup, naming the test), the spec goes through the
``pytest_nsbox_box_spec`` hook, a ``Box`` is started from it, and at teardown each box's
commands are summarized into the report of a failed test. Heavy modules are imported
inside hooks so ``pytest --help`` stays fast, and a session that uses no box pays for
nothing: the image store, the cgroup backend, garbage collection and the zygote all wait
for the first box (the first use of ``nsbox``, ``nsbox_factory``, ``nsbox_images`` or
isolate).
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import pytest

pytest_plugins = ["pytest_nsbox.teststats"]

if TYPE_CHECKING:
    from .errors import NsboxError
    from .factory import BoxFactory
    from .runtime.box import Box
    from .model.spec import BoxSpec

MARKER = "sandbox"
SESSION_PLUGIN = "nsbox-session"
T = TypeVar("T")
PT = TypeVar("PT", bound="_PerTest")
P = ParamSpec("P")
KEEP_CHOICES = ("never", "failed", "all")
HELP_REQUIRE = ("fail, instead of skip, tests that need a box when this host cannot run "
                "boxes (not Linux, not root, no overlayfs)")
HELP_KEEP = ("keep boxes' read-write layers for inspection: never (default), failed (boxes "
             "of failed tests) or all; their paths are printed at the end")
HELP_STORE = "directory of the image store (default /var/lib/nsbox, or $NSBOX_STORE)"
#: Ini names that still work, each with its new name (a deprecation warning says so).
RENAMED_INI = {"nsbox_state_dir": "nsbox_store_dir"}
HELP_RUN = ("directory of running boxes' layers (default /dev/shm/nsbox when /dev/shm is "
            "tmpfs, else /run/nsbox, or $NSBOX_RUN)")
HELP_CGROUP = "cgroup (relative to the hierarchy root) to create box cgroups under"
HELP_UNAVAILABLE = ("what a test gets whose box asks for a limit this host cannot apply "
                    "(e.g. rootless without a delegated cgroup): fail (default), skip, or "
                    "warn (the box runs without it)")
HELP_IMAGES_DIR = "folder of fixtures images (NAME/Containerfile), relative to rootdir"
HELP_ISOLATE = ("run every collected test body inside its own box (marker keys still apply; "
                "a marker's isolate=False keeps its tests out; needs the 'host' image)")
HELP_POOL = ("warm pool: prepare up to N boxes for the next tests while the current one runs "
             "(default 0: off)")
HELP_IMAGE_CACHE = ("shared build cache, REGISTRY/REPO: Containerfile steps are looked up "
                    "there before they are built and pushed there after")
HELP_BUILD_ARG = ("ARG value for Containerfile builds: KEY=VALUE (KEY alone takes its value "
                  "from the environment); repeatable, over ini nsbox_build_args")
#: ini defaults for marker keys, ``nsbox_<key>``: every key but ``name`` (one name for
#: every box would clash); ``nsbox_isolate = true`` is ``--nsbox-isolate``.
INI_DEFAULT_KEYS = ("image", "memory", "cpus", "pids", "network", "hostname", "env", "user",
                    "binds", "timeout", "rate", "latency", "jitter", "loss", "privileged",
                    "cap_add", "cap_drop", "seccomp", "isolate")

spec_key = pytest.StashKey["BoxSpec | Exception"]()
factory_key = pytest.StashKey["BoxFactory"]()
reports_key = pytest.StashKey["dict[str, pytest.TestReport]"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsbox", "per-test containers (pytest-nsbox)")
    group.addoption("--nsbox-require", action="store_true", default=None, help=HELP_REQUIRE)
    group.addoption("--nsbox-keep", choices=KEEP_CHOICES, default=None, help=HELP_KEEP)
    group.addoption("--nsbox-isolate", action="store_true", default=False, help=HELP_ISOLATE)
    group.addoption("--nsbox-build-arg", action="append", default=[], metavar="KEY=VALUE",
                    help=HELP_BUILD_ARG)
    group.addoption("--nsbox-image-cache", default=None, metavar="REGISTRY/REPO",
                    help=HELP_IMAGE_CACHE + " (over ini nsbox_image_cache)")
    parser.addini("nsbox_image_cache", HELP_IMAGE_CACHE, default="")
    parser.addini("nsbox_build_args", HELP_BUILD_ARG + " (one KEY=VALUE per line)",
                  type="linelist", default=[])
    parser.addini("nsbox_require", HELP_REQUIRE, type="bool", default=False)
    parser.addini("nsbox_keep", HELP_KEEP, default="never")
    parser.addini("nsbox_store_dir", HELP_STORE, default="")
    for old, new in RENAMED_INI.items():
        parser.addini(old, f"deprecated name of {new}", default="")
    parser.addini("nsbox_run_dir", HELP_RUN, default="")
    parser.addini("nsbox_cgroup_parent", HELP_CGROUP, default="")
    parser.addini("nsbox_unavailable_limits", HELP_UNAVAILABLE, default="fail")
    parser.addini("nsbox_images_dir", HELP_IMAGES_DIR, default="fixtures_images")
    parser.addini("nsbox_pool", HELP_POOL, default="0")
    parser.addini("nsbox_insecure_registries", "registries (host:port) pulled from over plain "
                  "http", type="linelist", default=[])
    for key in INI_DEFAULT_KEYS:
        parser.addini(f"nsbox_{key}", f"default for sandbox({key}=...)", default="")


class NsboxDeprecationWarning(pytest.PytestDeprecationWarning):
    """An nsbox option under an old name: it still works; the message names the new one."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import newhooks

    pluginmanager.add_hookspecs(newhooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandbox(**keys): run this test's nsbox fixture with these box keys "
        "(image, memory, cpus, pids, network, hostname, env, binds, timeout, ...)")
    keep = config.getoption("nsbox_keep") or config.getini("nsbox_keep") or "never"
    if keep not in KEEP_CHOICES:
        raise pytest.UsageError(f"ini nsbox_keep={keep!r}: use one of {', '.join(KEEP_CHOICES)}")
    for old, new in RENAMED_INI.items():
        if config.getini(old) and not config.getini(new):
            config.issue_config_time_warning(NsboxDeprecationWarning(
                f"ini {old} is deprecated (runc's \"state\" is the run directory; this is "
                f"the image store): rename it to {new}"), stacklevel=2)
    session = NsboxSession(config, keep)
    config.stash[_settings_key] = session
    config.pluginmanager.register(session, SESSION_PLUGIN)
    from .runtime import client  # light: the zygote itself starts with the first box

    client.hold()  # released at unconfigure; the last session of the process closes it


class NsboxSession:
    """The session's nsbox state, registered as the plugin object ``nsbox-session`` (as
    pytest's ``tmpdir.py`` registers its factory, pytest-xdist its ``DSession``): options
    resolved once (CLI over ini over built-in defaults), the engine, the pool, each test's
    box factory, and the one place our errors become pytest outcomes (``outcome_of``).
    Its hooks: the kept boxes' summary, and the teardown at unconfigure."""

    def __init__(self, config: pytest.Config, keep: str) -> None:
        self.config = config
        self.keep = keep
        cli = config.getoption("nsbox_require")
        self.require = bool(cli) if cli is not None else bool(config.getini("nsbox_require"))
        from .errors import LimitUnavailable

        self.unavailable_limits = str(config.getini("nsbox_unavailable_limits")).strip().lower()
        if self.unavailable_limits not in LimitUnavailable.POLICIES:
            raise pytest.UsageError(
                f"ini nsbox_unavailable_limits={self.unavailable_limits!r}: use one of "
                f"{', '.join(LimitUnavailable.POLICIES)}")
        self.defaults = {key: config.getini(f"nsbox_{key}") for key in INI_DEFAULT_KEYS
                         if config.getini(f"nsbox_{key}")}
        self.isolate_all = bool(config.getoption("nsbox_isolate")) or str(
            self.defaults.get("isolate", "")).strip().lower() in ("1", "true", "yes", "on")
        self.kept: list[tuple[str, str]] = []
        self._engine: Any = None
        pool = str(config.getini("nsbox_pool") or "0").strip()
        if not pool.isdigit():
            raise pytest.UsageError(f"ini nsbox_pool={pool!r}: not a number of boxes; "
                                    f"use e.g. nsbox_pool = 2")
        self.pool_size = int(pool)
        self.build_args = self._build_args()
        self.image_cache = self._image_cache()
        self._pool: Any = None
        self.positions: dict[str, int] = {}
        self.items: list[pytest.Item] = []
        if self.pool_size > 0:
            self.register(_Prefetch)

    def _build_args(self) -> dict[str, str]:
        """``--nsbox-build-arg`` over ini ``nsbox_build_args``, checked now: a bad one is a
        usage error naming its source, shown once before any test runs. The builder is
        imported only when some are given (a session without them pays nothing)."""
        lines = list(self.config.getini("nsbox_build_args"))
        options = list(self.config.getoption("nsbox_build_arg") or [])
        if not lines and not options:
            return {}
        from .errors import ImageError
        from .images.build import collect_build_args

        try:
            return collect_build_args(lines, options)
        except ImageError as exc:
            problem = str(exc)
        raise pytest.UsageError(problem)

    def _image_cache(self) -> str | None:
        """``--nsbox-image-cache`` over ini ``nsbox_image_cache``, checked now: a value
        that is not ``REGISTRY/REPO`` is a usage error naming its source."""
        option = self.config.getoption("nsbox_image_cache")
        value = option if option is not None else self.config.getini("nsbox_image_cache")
        if not value:
            return None
        from .build.cache import repository
        from .errors import ImageError

        try:
            repository(value, "--nsbox-image-cache" if option is not None else
                       "ini nsbox_image_cache")
        except ImageError as exc:
            raise pytest.UsageError(str(exc)) from None
        return str(value).strip()

    def register(self, hooks: type[PT]) -> PT:
        """Add one kind of per-test hooks to this session (once); returns it."""
        name = f"nsbox-{hooks.__name__.strip('_').lower()}"
        manager = self.config.pluginmanager
        found = manager.get_plugin(name)
        if found is None:
            found = hooks()
            manager.register(found, name)
        return found

    @property
    def pool(self) -> Any:
        if self._pool is None and self.pool_size > 0:
            from .pool import Pool

            self._pool = Pool(self.pool_size, self.engine)
        return self._pool

    @property
    def engine(self) -> Any:
        """The session's ``Engine``, made at the first box (or image) the session asks for;
        that is also when garbage of dead owners is collected (see ``_collect_garbage``)."""
        if self._engine is None:
            from .runtime import engine as engine_mod
            from .state import StateDirs

            ini = self.config.getini
            store_dir = ini("nsbox_store_dir") or ini("nsbox_state_dir")  # the old name
            dirs = StateDirs.default(store=store_dir or None,
                                     run=ini("nsbox_run_dir") or None)
            self._engine = engine_mod.Engine(dirs=dirs, rootdir=str(self.config.rootpath),
                                             cgroup_parent=ini("nsbox_cgroup_parent") or None,
                                             unavailable_limits=self.unavailable_limits)
            store = self._engine.store
            store.images_dir = str(self.config.rootpath / (ini("nsbox_images_dir")
                                                           or "fixtures_images"))
            store.rootdir = str(self.config.rootpath)
            store.insecure_registries = list(ini("nsbox_insecure_registries"))
            store.build_args = dict(self.build_args)
            store.image_cache = self.image_cache
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            store.progress = reporter.write_line if reporter is not None else None
            hook = self.config.hook
            self._engine.store.resolvers.append(
                lambda ref: hook.pytest_nsbox_resolve_image(ref=ref))
            engine_mod.configure(self._engine)
            self._collect_garbage()
        return self._engine

    def factory(self, item: pytest.Item) -> BoxFactory:
        """The test's box factory (one per test, shared by ``nsbox``, ``nsbox_factory``
        and isolate), told of the test's hooks and pool."""
        found = item.stash.get(factory_key, None)
        if found is None:
            from . import isolate
            from .factory import BoxFactory

            self.register(_BoxReports)  # before this test's first report is made
            hook = item.config.hook
            pool = self.pool if self.pool_size > 0 else None
            found = BoxFactory(
                group=item.nodeid, label=item.name, base_spec=lambda: _item_spec(item),
                engine=lambda: self.engine,
                adjust=lambda spec: hook.pytest_nsbox_box_spec(spec=spec, item=item),
                started=lambda box: hook.pytest_nsbox_box_started(box=box),
                finished=lambda box, outcome: hook.pytest_nsbox_box_finished(
                    box=box, outcome=outcome),
                pooled=(lambda: pool.take(item.nodeid)) if pool is not None else None,
                inside_box=isolate.inner())
            item.stash[factory_key] = found
        return found

    def outcome_of(self, item: pytest.Item, fn: Callable[P, T], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, with our errors turned into ``item``'s outcome
        (``as_outcome``)."""
        from .errors import NsboxError

        try:
            return fn(*args, **kwargs)
        except NsboxError as exc:
            error = exc
        self.as_outcome(item, error)  # outside the except: shown once, not chained

    def as_outcome(self, item: pytest.Item, error: NsboxError | Exception) -> NoReturn:
        """The one place our errors become pytest's: a host that cannot run boxes skips
        the test with its one fix-it line (fails it under ``--nsbox-require``), reported
        at the test's own file and line as a ``skipif`` is (``skip.Exception(...,
        _use_item_location=True)``, which ``_pytest/reports.py``
        ``TestReport.from_item_and_call`` turns into the item's location); a bad spec, a
        broken image and a box asked for inside an isolated box fail it with one line
        naming the test; a limit the host cannot apply fails or skips it as ini
        ``nsbox_unavailable_limits`` says (``LimitUnavailable.policy``); anything else (a
        box that failed to start, a ``TeardownError``) is raised as it is, with its
        traceback."""
        from .errors import (HostNotSupported, ImageError, LimitUnavailable, NestedBoxError,
                             SpecError)

        if isinstance(error, LimitUnavailable) and error.policy == "skip":
            raise pytest.skip.Exception(f"nsbox: {error}", _use_item_location=True)
        if isinstance(error, LimitUnavailable):
            _fail(f"{item.nodeid}: {error}")
        if isinstance(error, HostNotSupported):
            reason = f"nsbox: {error}"
            if self.require:
                _fail(f"{reason} (--nsbox-require is set)")
            raise pytest.skip.Exception(reason, _use_item_location=True)
        if isinstance(error, (SpecError, ImageError, NestedBoxError)):
            _fail(f"{item.nodeid}: {error}")
        raise error

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.kept:
            return
        terminalreporter.section("nsbox kept boxes")
        for nodeid, path in self.kept:
            terminalreporter.write_line(f"{nodeid}: read-write layer kept at {path}")

    def pytest_unconfigure(self) -> None:
        """Tear down what the session made: the warm pool's unused boxes, then (when this
        is the last session of the process holding it) the zygote, waited for, with every
        spare and box it started; then the owner lock. The session is over by then, so a
        pool box whose teardown failed is told on stderr (``gc`` removes what is left)."""
        from .errors import TeardownError

        try:
            if self._pool is not None:
                self._pool.close()
        except TeardownError as exc:
            sys.stderr.write(f"nsbox: {exc}\n")
        finally:
            from .runtime import client

            client.release()
            if self._engine is not None:
                self._engine.release_owner_lock()

    def _collect_garbage(self) -> None:
        """What crashed runs left behind (dead owners' boxes, cgroups, networks), once per
        process, before its first box. Under xdist each worker that makes boxes does it
        (collectors take turns on ``<run>/gc.lock``; one that finds it taken skips);
        not inside an isolated test, nor where boxes cannot run. Its problem lines go to
        the terminal, not to the capture of the test that happens to be first."""
        from . import isolate
        from .errors import HostNotSupported
        from .runtime.engine import check_host

        if isolate.inner():
            return
        try:
            check_host()
        except HostNotSupported:
            return
        from .sweep import collect_at_session_start

        capture = self.config.pluginmanager.get_plugin("capturemanager")
        engine = self._engine
        if capture is None:
            collect_at_session_start(engine.dirs, engine.cgroup_parent)
            return
        with capture.global_and_fixture_disabled():
            collect_at_session_start(engine.dirs, engine.cgroup_parent)


_settings_key = pytest.StashKey[NsboxSession]()


def _marker_kwargs(item: pytest.Item) -> list[dict[str, Any]] | None:
    """The sandbox markers' kwargs, closest first; None when the item has none."""
    markers = list(item.iter_markers(MARKER))
    if not markers:
        return None
    for mark in markers:
        if mark.args:
            from .errors import SpecError

            raise SpecError("args", mark.args, "positional arguments are not accepted",
                            "sandbox(image='busybox')")
    return [dict(m.kwargs) for m in markers]


def _item_spec(item: pytest.Item) -> BoxSpec:
    """The validated spec of the item's marker(s) and ini defaults; raises SpecError."""
    from .model.spec import BoxSpec, merge_marker_kwargs

    found = item.stash.get(spec_key, None)
    if found is None:
        try:
            kwargs_list = _marker_kwargs(item) or []
            settings = item.config.stash[_settings_key]
            found = BoxSpec.from_kwargs(merge_marker_kwargs(kwargs_list),
                                        defaults=settings.defaults)
        except Exception as exc:
            found = exc
        item.stash[spec_key] = found
    if isinstance(found, Exception):
        raise found
    return found


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Validate every marker now, so a typo is caught before any box is built; the error
    # is raised at setup of that test alone (the rest of the session runs). The per-test
    # hooks are registered only where this session needs them (see ``_PerTest``).
    settings = config.stash[_settings_key]
    bad = isolated = False
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            try:
                spec = _item_spec(item)
            except Exception:
                bad = True
            else:
                isolated = isolated or spec.isolate
    if bad:
        settings.register(_SpecErrors)
    if isolated or settings.isolate_all:
        settings.register(_Isolation).classify(config, items)


class _PerTest:
    """Hooks that run for every test, registered only in sessions that need them, so a
    session that uses no box pays no per-test cost: ``_SpecErrors`` when a marker is
    invalid, ``_Isolation`` when a test is isolated, ``_Prefetch`` with a warm pool,
    ``_BoxReports`` from the first box factory on."""


class _SpecErrors(_PerTest):
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """A marker's spec was validated at collection and its error stashed: fail the
        test now, whether or not it uses a box."""
        found = item.stash.get(spec_key, None)
        if isinstance(found, Exception):
            item.config.stash[_settings_key].as_outcome(item, found)


BOX_FIXTURES = frozenset({"nsbox", "nsbox_factory", "nsbox_images"})
isolation_key = pytest.StashKey["BoxSpec | None"]()


def _isolation_spec(item: pytest.Item, isolate_all: bool) -> BoxSpec | None:
    """The spec an isolated test's box gets; None when ``item`` runs here: it is not
    isolated, its marker is invalid (its setup fails with that), or it makes boxes itself
    (``nsbox``, ``nsbox_factory``, ``nsbox_images``: its boxes are its isolation)."""
    from . import isolate

    if isolate.inner() or BOX_FIXTURES & set(getattr(item, "fixturenames", ())):
        return None
    found = item.stash.get(spec_key, None)
    if found is None and not isolate_all:
        return None
    try:
        spec = _item_spec(item)
        stated = any("isolate" in kwargs for kwargs in _marker_kwargs(item) or [])
    except Exception:
        return None
    if stated:  # the closest marker that says wins over --nsbox-isolate and the ini
        return spec if spec.isolate else None
    return spec if (isolate_all or spec.isolate) else None


def _pytest_timeout(item: pytest.Item) -> float | None:
    """pytest-timeout's timeout for ``item`` (its marker, ``--timeout``, ini ``timeout``),
    in seconds; None without the plugin or a timeout."""
    config = item.config
    if not config.pluginmanager.has_plugin("timeout"):
        return None
    marker = item.get_closest_marker("timeout")
    raw: object = None
    if marker is not None:
        raw = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if raw is None:
        raw = config.getoption("timeout", None)
    if raw is None:
        raw = config.getini("timeout") if "timeout" in config._parser._inidict else None
    try:
        value = float(raw) if raw not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value and value > 0 else None


class _Isolation(_PerTest):
    """Isolated tests are not run here: each goes to this process's isolation worker
    (``isolate.Worker``), one per image, network and binds, and its reports come back to
    be logged here."""

    def __init__(self) -> None:
        from . import isolate

        self.workers: dict[isolate.WorkerKey, isolate.Worker] = {}
        #: Workers that ended before they were ready: why (their tests fail with it,
        #: no new worker is started for each of them).
        self.broken: dict[isolate.WorkerKey, str] = {}
        self.problems: list[str] = []
        self.timeouts: dict[str, float | None] = {}

    def classify(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Decide which tests are isolated. pytest-timeout's alarm for them is armed in
        their box, where the test runs; here their timeout is read and the plugin told to
        keep out of this process's wait (``timeout(0)``)."""
        settings = config.stash[_settings_key]
        for item in items:
            spec = _isolation_spec(item, settings.isolate_all)
            item.stash[isolation_key] = spec
            if spec is not None and config.pluginmanager.has_plugin("timeout"):
                self.timeouts[item.nodeid] = _pytest_timeout(item)
                item.add_marker(pytest.mark.timeout(0), append=False)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> bool | None:
        spec = item.stash.get(isolation_key, None)
        if spec is None:
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._run(item, nextitem, spec):
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _run(self, item: pytest.Item, nextitem: pytest.Item | None,
             spec: BoxSpec) -> list[pytest.TestReport]:
        from . import isolate
        from .errors import NsboxError
        from .teststats import properties

        settings = item.config.stash[_settings_key]
        hook = item.config.hook
        worker = None
        try:
            spec = copy.copy(spec)
            hook.pytest_nsbox_box_spec(spec=spec, item=item)
            spec = spec.validate()
            key = isolate.WorkerKey.of(spec)
            if key in self.broken:
                raise isolate.WorkerGone(self.broken[key])
            worker = self.workers.get(key)
            if worker is None or not worker.alive:
                if worker is not None:
                    self._retire(key)
                worker = isolate.Worker(item.config, lambda: settings.engine, key,
                                        lambda s: _worker_box(settings, s))
                self.workers[key] = worker
                try:
                    worker.start()
                except isolate.WorkerGone as exc:
                    self.broken[key] = str(exc)
                    raise
            pytest_timeout = self.timeouts.get(item.nodeid)
            hard = spec.timeout if spec.timeout is not None else (
                pytest_timeout + isolate.TIMEOUT_GRACE if pytest_timeout else None)
            outcome = worker.run(item, nextitem, spec, hard)
        except Exception as exc:  # a test's outcome, never an internal error of the run
            if worker is not None and not isinstance(exc, NsboxError):
                self._retire(worker.key)
            elif worker is not None and not worker.alive:
                self._retire(worker.key)
            return self._setup_error(item, exc)
        stats = outcome.stats
        props = properties(memory_peak=stats.memory_peak if stats else None,
                           cpu_seconds=stats.cpu_seconds if stats else None,
                           wall_seconds=outcome.call_seconds(), oom_kills=stats.oom_kills if stats else 0
                           ) if item.config.getoption("nsbox_stats", None) is not None else []
        if spec.timeout is not None and outcome.timed_out is not None:
            outcome.timed_out = spec.timeout
        return isolate.finish_reports(item, outcome, spec, props)

    def _setup_error(self, item: pytest.Item, error: Exception) -> list[pytest.TestReport]:
        """A test whose box or worker could not be had: our errors become its setup's
        outcome (``NsboxSession.as_outcome``), as the ``nsbox`` fixture's do."""
        from . import isolate
        from _pytest.runner import CallInfo

        settings = item.config.stash[_settings_key]

        def fail() -> None:
            if isinstance(error, isolate.WorkerGone):
                _fail(f"{item.nodeid}: nsbox isolate: {error}")
            settings.as_outcome(item, error)

        call = CallInfo.from_call(fail, when="setup")
        setup = item.ihook.pytest_runtest_makereport(item=item, call=call)
        teardown = isolate.made_report(item, "teardown", "passed", None, 0.0)
        return [setup, teardown]

    def _retire(self, key: Any) -> None:
        worker = self.workers.pop(key, None)
        if worker is not None:
            worker.close()
            self.problems += worker.problems

    def pytest_sessionfinish(self) -> None:
        """End every worker's session (its fixtures are torn down there) and box."""
        for key in list(self.workers):
            self._retire(key)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.problems:
            terminalreporter.section("nsbox isolation")
            for line in self.problems:
                terminalreporter.write_line(line)


def _worker_box(settings: NsboxSession, spec: BoxSpec) -> Box:
    from .runtime.box import Box

    return Box.from_spec(spec, engine=settings.engine, label="isolation-worker")


class _Prefetch(_PerTest):
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        settings = session.config.stash[_settings_key]
        settings.items = list(session.items)
        settings.positions = {item.nodeid: i for i, item in enumerate(settings.items)}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """With a warm pool, start the boxes of the next tests now, in the background."""
        settings = item.config.stash[_settings_key]
        if hasattr(item.config, "workerinput"):  # xdist decides what runs next: look one ahead
            upcoming = [nextitem] if nextitem is not None else []
        else:
            start = settings.positions.get(item.nodeid, -1) + 1
            upcoming = settings.items[start:start + 2 * settings.pool_size]
        for future in upcoming:
            if ("nsbox" in getattr(future, "fixturenames", ())
                    and settings.pool.wanted(future.nodeid)):
                _prefetch(future, settings)


def _prefetch(item: pytest.Item, settings: NsboxSession) -> None:
    from .errors import NsboxError
    from .runtime.engine import check_host

    try:
        check_host()
        spec = _item_spec(item)
        item.config.hook.pytest_nsbox_box_spec(spec=spec, item=item)
        spec = spec.validate()
    except (NsboxError, ValueError):
        return  # that test reports its own error when it runs
    settings.pool.prefetch(item.nodeid, spec, label=item.name)


class _BoxReports(_PerTest):
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Record the reports of tests with boxes (their outcome decides ``--nsbox-keep``),
        and add the boxes' commands to the report of a failed setup or call."""
        report = yield
        factory = item.stash.get(factory_key, None)
        if factory is None:  # no box factory in this test
            return report
        boxes = factory.boxes
        item.stash.setdefault(reports_key, {})[report.when] = report
        if boxes and report.failed and report.when in ("setup", "call"):
            from .report import box_section

            text = "\n\n".join(box_section(box) for box in boxes)
            report.sections.append(("nsbox boxes", text))
        return report


def _outcome(item: pytest.Item) -> str:
    reports = item.stash.get(reports_key, {})
    if any(r.failed for r in reports.values()):
        return "failed"
    if any(r.skipped for r in reports.values()):
        return "skipped"
    return "passed"


class NsboxFactory:
    """``nsbox_factory(name=None, **keys) -> Box``: more boxes for this test, all torn
    down with it. The pytest face of ``factory.BoxFactory``: its errors become this
    test's fail or skip (``NsboxSession.outcome_of``)."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.session = item.config.stash[_settings_key]
        self.factory = self.session.factory(item)

    @property
    def boxes(self) -> list[Box]:
        return self.factory.boxes

    def __call__(self, name: str | None = None, **keys: Any) -> Box:
        return self.session.outcome_of(self.item, self.factory, name, **keys)

    def close_all(self) -> None:
        """Close every box of the test (``--nsbox-keep`` decides on its outcome); one
        ``TeardownError`` holds every box's failures."""
        outcome = _outcome(self.item)
        keep = self.session.keep == "all" or (self.session.keep == "failed"
                                              and outcome == "failed")
        try:
            self.factory.close_all(outcome, keep=keep)
        finally:
            self.session.kept.extend((self.item.nodeid, path) for path in self.factory.kept)
            self.factory.kept.clear()


def _fail(message: str) -> NoReturn:
    """Fail the test with ``message`` alone: no traceback, and (called in an ``except``
    block) not chained to the error being handled, so it is shown once and not as "during
    handling of the above exception" (``raise ... from None`` sets ``__suppress_context__``,
    which pytest's ``FormattedExcinfo.repr_excinfo`` honours as Python's traceback does)."""
    raise pytest.fail.Exception(message, pytrace=False) from None


@pytest.fixture
def nsbox_factory(request: pytest.FixtureRequest) -> Iterator[NsboxFactory]:
    """Make boxes configured like the test's marker, with overrides; all die with the test."""
    factory = NsboxFactory(request.node)
    yield factory
    factory.close_all()


@pytest.fixture
def nsbox(nsbox_factory: NsboxFactory) -> Box:
    """A running box for this test, configured by its ``sandbox`` marker."""
    return nsbox_factory()


class Images:
    """The session's view of the image store (``nsbox_images`` fixture); each method is
    ``ImageStore``'s of the same name (its docstrings give the errors, ``ImageError``)."""

    def __init__(self, settings: NsboxSession) -> None:
        self.settings = settings

    def get(self, ref: str) -> Any:
        """The ``Image`` ``ref`` names, in ``ImageStore.get``'s resolution order: built-ins,
        ``oci:``/``oci-archive:``/``docker-archive:``, store ids, ``fixtures_images``
        folders, store tags, the ``pytest_nsbox_resolve_image`` hook, a registry."""
        return self.settings.engine.store.get(ref)

    def build(self, path_or_name: Any, build_args: dict[str, str] | None = None,
              target: str | None = None) -> Any:
        """Build a fixtures image by name, or a Containerfile (a file or its folder);
        ``build_args`` (ARG values) go over ``--nsbox-build-arg``/ini ``nsbox_build_args``;
        ``target`` picks the stage (default: the last)."""
        return self.settings.engine.store.build(path_or_name, build_args=build_args,
                                              target=target)

    def load(self, path: Any) -> Any:
        """Import a ``docker save`` tar, an OCI layout or an OCI archive; returns the
        ``Image`` (``ImageError`` if it cannot)."""
        return self.settings.engine.store.load(path)


@pytest.fixture(scope="session")
def nsbox_images(pytestconfig: pytest.Config) -> Images:
    """The image store shared by this session (and by every pytest process on the host)."""
    return Images(pytestconfig.stash[_settings_key])
