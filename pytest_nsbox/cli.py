"""``python -m pytest_nsbox``: see, enter and clean up boxes from a shell.

Subcommands: ``ps`` (running and kept boxes), ``enter BOX [CMD...]`` (a shell inside a
running box, like ``nsenter``, or in a new box over a kept box's layers), ``gc`` (remove
what crashed runs left behind), ``images`` (the image store), ``doctor`` (what this host
gives boxes, and what to change). Exit status: 0 done, 1 failed (one ``nsbox: ...`` line on
stderr, no traceback), 2 bad usage; ``enter`` exits with its command's status; ``doctor``
1 when boxes cannot run here.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .kernel.io import readable
from . import records, sweep
from .model.defaults import DEFAULT_PATH
from .kernel.proc import in_cgroup, is_namespace_init
from .errors import NsboxError
from .state import StateDirs

if TYPE_CHECKING:
    from .kernel.hostcheck import Finding

PROG = "python -m pytest_nsbox"
#: Namespaces ``enter`` joins, with their setns flag names in ``kernel.libc`` (the PID
#: namespace is joined separately: it applies to the children of the caller).
ENTER_NAMESPACES = (("cgroup", "CLONE_NEWCGROUP"), ("ipc", "CLONE_NEWIPC"),
                    ("uts", "CLONE_NEWUTS"), ("net", "CLONE_NEWNET"), ("mnt", "CLONE_NEWNS"))
HINT_GC = f"`{PROG} gc` removes it"


class CliError(NsboxError):
    """An expected failure: its message is printed as one line, exit status 1."""


# -- ps ----------------------------------------------------------------------------------------

def format_age(seconds: float) -> str:
    """``75`` -> ``1m15s``: the two largest units."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _memory(backend: Any, box: records.BoxInfo) -> str:
    from .units import format_size

    if backend is None:
        return "-"
    try:
        current = backend.open(box.cgroup).stats().memory_current
    except (NsboxError, OSError):
        return "-"
    return "-" if current is None else format_size(current)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


#: ``ps``'s STATE column for ``gc.BoxInfo.state``: a box whose owner lives is running.
PS_STATES = {"live": "running", "kept": "kept"}


def cmd_ps(args: argparse.Namespace, dirs: StateDirs) -> int:
    """Running boxes, then kept ones (``--nsbox-keep``): id, name, image, state, owner
    pid, age and memory in use (kept boxes have neither owner nor memory), and for a kept
    box the test it came from (TEST: the label of its kept directory ``<label>-<id>``)."""
    boxes = records.scan_boxes(dirs, kept=True)
    shown = [b for b in boxes if b.state == "live"] + [b for b in boxes if b.state == "kept"]
    if args.quiet:
        for box in shown:
            print(box.id)
        return 0
    backend = _backend(args)
    rows = [["ID", "NAME", "IMAGE", "STATE", "OWNER", "AGE", "MEMORY", "TEST"]]
    for box in shown:
        running = box.state == "live"
        rows.append([box.id, box.name or "-", box.image or "-", PS_STATES[box.state],
                     str(box.owner_pid or "-") if running else "-", format_age(box.age),
                     _memory(backend, box) if running else "-", _kept_label(box)])
    print(_table(rows))
    dead = sum(1 for b in boxes if b.garbage)
    if dead:
        hint = HINT_GC if dead == 1 else HINT_GC.replace("removes it", "removes them")
        print(f"nsbox: {dead} box{'es' if dead != 1 else ''} of dead owners left behind; "
              f"{hint}", file=sys.stderr)
    return 0


def _kept_label(box: records.BoxInfo) -> str:
    """The test a kept box came from: its kept directory is ``<label>-<id>``
    (``records.dir_name``), the label being the test's name; ``-`` for a running box."""
    if box.state != "kept":
        return "-"
    name = os.path.basename(box.path)
    suffix = f"-{box.id}"
    return (name[:-len(suffix)] if name.endswith(suffix) else name) or "-"


# -- enter -------------------------------------------------------------------------------------

def find_box(dirs: StateDirs, ref: str) -> records.BoxInfo:
    """A box by id, name, or a unique prefix of either; running boxes before kept ones."""
    if not ref:
        raise CliError("enter: BOX is empty; give a box id or name (see `ps`)")
    boxes = records.scan_boxes(dirs, kept=True)

    def keys(box: records.BoxInfo) -> set[str]:
        found = {box.id, box.name}
        if box.state == "kept":
            found.add(os.path.basename(box.path))
        return {k for k in found if k}

    def exact(box: records.BoxInfo) -> bool:
        return ref in keys(box)

    def prefix(box: records.BoxInfo) -> bool:
        return any(k.startswith(ref) for k in keys(box))

    pools = ([b for b in boxes if b.state != "kept"], [b for b in boxes if b.state == "kept"])
    for match in (exact, prefix):
        for pool in pools:
            found = [b for b in pool if match(b)]
            if len(found) == 1:
                return found[0]
            if found:
                names = ", ".join(f"{b.id} ({b.name or '?'})" for b in found[:8])
                raise CliError(f"box {ref!r} is ambiguous: it matches {names}; give more of "
                               f"the id")
    raise CliError(f"no box {ref!r} in {dirs.boxes} or {dirs.kept}; `{PROG} ps` lists the "
                   f"running boxes")


def init_pid(box: records.BoxInfo, cgroup: Any) -> int:
    """The host PID of the box's init: owner.json's ``pid``, else found in its ``cgroup``
    (None: the box's cgroup was not found, ``open_cgroup``)."""
    candidates = [box.init_pid] if box.init_pid else []
    contained = cgroup is not None
    if cgroup is not None:
        try:
            candidates += cgroup.pids()
        except NsboxError:
            contained = False
    for pid in candidates:
        if pid and is_box_init(pid, box.cgroup, contained):
            return pid
    raise CliError(f"box {box.id}: its init process is gone (the box is being torn down, or "
                   f"its owner died: {HINT_GC})")


def open_cgroup(box: records.BoxInfo, backend: Any) -> tuple[Any, NsboxError | None]:
    """The box's cgroup from ``backend``, or None and why not (no backend: None, None)."""
    if backend is None:
        return None, None
    try:
        return backend.open(box.cgroup), None
    except NsboxError as exc:
        return None, exc


def is_box_init(pid: int, cgroup: str, contained: bool) -> bool:
    """Whether ``pid`` (still) is the init of the box whose cgroup is ``cgroup``, not a
    process that reused its number: PID 1 of a namespace below ours, in that cgroup. A
    rootless box without a cgroup of its own (``runtime/uncontained.py``: ``contained``
    False) is checked by what it has instead: its init is this user's, in a user
    namespace other than ours."""
    from .kernel import userns

    if not is_namespace_init(pid):
        return False
    if contained or not userns.rootless():
        return in_cgroup(pid, cgroup)
    try:
        theirs = os.stat(f"/proc/{pid}/ns/user").st_ino
        return (os.stat(f"/proc/{pid}").st_uid == os.geteuid()
                and theirs != os.stat("/proc/self/ns/user").st_ino)
    except OSError:
        return False


def cmd_enter(args: argparse.Namespace, dirs: StateDirs) -> int:
    box = find_box(dirs, args.box)
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if box.state == "kept":
        return enter_kept(dirs, box, argv or ["/bin/sh"], args)
    if box.state == "starting":
        raise CliError(f"box {box.id} is still being created; try again in a moment")
    if box.state != "live":
        raise CliError(f"box {box.id} ({box.name or '?'}) is not running: its owner "
                       f"(pid {box.owner_pid or '?'}) is dead; {HINT_GC}")
    return enter(box, argv or ["/bin/sh"], _backend(args))


def enter_kept(dirs: StateDirs, box: records.BoxInfo, argv: list[str],
               args: argparse.Namespace) -> int:
    """Run ``argv`` in a new box over kept box ``box``'s layers (``kept.reopened``), the way
    ``enter`` runs it in a live box; the new box is deleted when it returns, the kept
    layer is left as it was. Returns the command's exit status."""
    from . import kept
    from .runtime import client

    try:
        with kept.reopened(dirs, box, args.cgroup_parent) as new:
            info = records.BoxInfo(new.id, new.dirs.base, records.read_record(new.dirs.base),
                                   "live", 0.0)
            return enter(info, argv, _backend(args))
    finally:
        client.shutdown()


def enter(box: records.BoxInfo, argv: list[str], backend: Any) -> int:
    """Run ``argv`` in the box's namespaces, root and cgroup; returns its exit status.

    Like ``nsenter -t PID -a -r`` plus joining the box's cgroup (so its limits apply and
    its teardown kills what runs here). The command runs as root with every capability
    (the host's root; for a rootless box, root of its user namespace, joined first), not
    under the box's own confinement, with the environment the box's commands get and in
    its working directory (``/`` if that is gone). A rootless box whose cgroup is not
    found (it has none: ``runtime/uncontained.py``) is entered without one, said on
    stderr; for a root owner's box that is an error.
    """
    from .kernel import libc, userns

    cgroup, missing = open_cgroup(box, backend)
    pid = init_pid(box, cgroup)
    if missing is not None:
        if not userns.rootless():
            raise missing
        print(f"{PROG} enter: box {box.id}: no cgroup of its own found ({missing}); the "
              f"command runs without one (--cgroup-parent names where its cgroup is)",
              file=sys.stderr)
    procs = cgroup.procs_files() if cgroup is not None else []
    fds: list[int] = []
    try:
        # Opened through a pidfd-checked /proc/<pid>: if the pid were reused meanwhile,
        # the pidfd says so and nothing of another process is used.
        pidfd = os.pidfd_open(pid)
        fds.append(pidfd)
        if not is_box_init(pid, box.cgroup, cgroup is not None):
            raise CliError(f"box {box.id}: its init (pid {pid}) exited; {HINT_GC}")
        proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(proc)
        ns = {name: os.open(f"ns/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
              for name, _flag in ENTER_NAMESPACES}
        fds.extend(ns.values())
        pidns = os.open("ns/pid", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        fds.append(pidns)
        root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc)
        fds.append(root)
        score = _command_oom_score(proc)
        if readable([pidfd], 0):
            raise CliError(f"box {box.id}: its init (pid {pid}) exited; {HINT_GC}")
        # The box's own environment for its commands (image ENV, marker env), as
        # `docker exec` gives the container's; as root, HOME is /root unless that sets it.
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", **box.env,
               "TERM": os.environ.get("TERM", "dumb")}
        if box.hostname:
            env["HOSTNAME"] = box.hostname
        # A rootless box's namespaces belong to its user namespace: only a process in it
        # may join them (setns(2): CAP_SYS_ADMIN in the namespace's owning user
        # namespace), so the child joins that first, as `nsenter -U` does; the owner's
        # user has every capability there (user_namespaces(7)).
        user = (os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
                if userns.rootless() else None)
        if user is not None:
            fds.append(user)
        else:
            # Children of this process are born in the box's PID namespace.
            libc.setns(pidns, libc.CLONE_NEWPID)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            if user is not None:
                _enter_userns(box, user, pidns)
            _enter_child(box, argv, env, procs, ns, root, score)
    except OSError as exc:
        raise CliError(f"cannot enter box {box.id}: {exc.strerror or exc}"
                       + (f": {exc.filename}" if exc.filename else "")) from None
    finally:
        for fd in fds:
            os.close(fd)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        _, status = os.waitpid(child, 0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _enter_userns(box: records.BoxInfo, user: int, pidns: int) -> None:
    """In the forked child of a rootless ``enter``: join the box's user namespace and
    its PID namespace (a single-threaded process may join a user namespace, setns(2)),
    then fork the process that joins the rest (``_enter_child``) and wait for it, as
    ``nsenter`` forks after joining a PID namespace; exits with its status."""
    from .kernel import libc

    try:
        libc.setns(user, libc.CLONE_NEWUSER)
        libc.setns(pidns, libc.CLONE_NEWPID)
        child = os.fork()
    except BaseException as exc:  # noqa: BLE001 - a forked child must never return
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        try:
            os.write(2, f"nsbox: enter {box.id}: cannot join its user and PID namespaces: "
                        f"{reason}\n".encode())
        finally:
            os._exit(125)
    if child == 0:
        return
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _command_oom_score(proc: int) -> int | None:
    """The ``oom_score_adj`` a command of the box has, from its init's (``proc``: its
    ``/proc/<pid>`` directory) as ``kernel.proc.choose_oom_scores`` pairs them: 0 beside
    an init at -999, else 1000; None when the init's cannot be read."""
    from .kernel import proc as kproc

    try:
        fd = os.open("oom_score_adj", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            init = int(os.read(fd, 32))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    privileged = kproc.OOM_SCORES_PRIVILEGED
    return privileged[1] if init == privileged[0] else kproc.OOM_SCORE_UNPRIVILEGED


def _enter_child(box: records.BoxInfo, argv: list[str], env: dict[str, str], procs: list[str],
                 ns: dict[str, int], root: int, score: int | None = None) -> None:
    """In the forked child: join cgroup and namespaces, take the box's root, take a
    command's OOM score (``score``, best effort), exec."""
    from .kernel import libc
    from .kernel import proc as kproc

    step = "start"
    try:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        step = "join its cgroup"
        for path in procs:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for name, flag in ENTER_NAMESPACES:
            step = f"join its {name} namespace"
            libc.setns(ns[name], getattr(libc, flag))
        if score is not None:  # what the OOM killer picks first, as the box's commands
            kproc.set_oom_score(score)
        step = "enter its root"
        os.fchdir(root)
        os.chroot(".")
        try:
            os.chdir(box.workdir)
        except OSError:
            os.chdir("/")
        step = f"run {argv[0]!r}"
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - a forked child must never return
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        code = 126 if isinstance(exc, PermissionError) else 127 if isinstance(
            exc, FileNotFoundError) else 125
        try:
            os.write(2, f"nsbox: enter {box.id}: cannot {step}: {reason}\n".encode())
        finally:
            os._exit(code)


# -- gc ----------------------------------------------------------------------------------------

def cmd_gc(args: argparse.Namespace, dirs: StateDirs) -> int:
    try:
        lines = sweep.collect(dirs, dry_run=args.dry_run, cgroup_parent=args.cgroup_parent,
                           kept=args.kept)
    except sweep.GcBusy:
        raise CliError(f"another gc is running (it holds {dirs.run}/gc.lock); try again "
                       f"later") from None
    except sweep.GcIncomplete as exc:
        for line in exc.removed:
            print(line)
        for problem in exc.problems:
            print(f"nsbox: gc: {problem}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if not lines:
        print("nothing to collect")
    return 0


# -- images ------------------------------------------------------------------------------------

def cmd_images(args: argparse.Namespace, dirs: StateDirs) -> int:
    from .runtime import client
    from .runtime import engine as engine_mod

    # RUN steps of a build run in boxes of this process, over this store.
    engine = engine_mod.Engine(dirs=dirs, cgroup_parent=args.cgroup_parent)
    engine_mod.configure(engine)
    store = engine.store
    store.progress = lambda line: print(line, file=sys.stderr, flush=True)
    try:
        from . import image_commands

        store.insecure_registries = image_commands.insecure_registries(
            getattr(args, "insecure_registry", None))
        store.image_cache = getattr(args, "image_cache", None) or None
        return _images(args, store)
    finally:
        client.shutdown()
        engine.release_owner_lock()


def _images(args: argparse.Namespace, store: Any) -> int:
    from . import image_commands
    from .units import format_size

    action = args.images_action or "list"
    if action == "list":
        rows = [["REF", "ID", "BASE", "LAYERS", "SIZE", "CREATED"]]
        for image in image_commands.list_images(store):
            rows.append([",".join(image["tags"]) or "<none>",
                         str(image["id"]).split(":")[-1][:12], image["base"] or "-",
                         str(image["layers"]), format_size(int(image["size"])),
                         image["created"] or "-"])
        print(_table(rows))
    elif action == "build":
        built = image_commands.build(store, args.path, build_args=args.build_arg,
                                     target=args.target)
        print(f"built {built.ref} {built.id}")
    elif action == "push":
        pushed = image_commands.push(store, args.ref, args.dest, args.chunk_size)
        print(f"pushed {pushed.ref} {pushed.digest}")
    elif action == "rm":
        failed = 0
        for ref in args.refs:
            try:
                for name in image_commands.remove(store, ref):
                    print(f"removed {name}")
            except NsboxError as exc:
                print(f"nsbox: {exc}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    elif action == "prune":
        layers = image_commands.prune(store)
        for layer in layers:
            print(f"removed layer {layer}")
        if not layers:
            print("nothing to prune")
    return 0


# -- doctor ------------------------------------------------------------------------------------

#: ``doctor``'s status column: a piece that works; works, but something it offers is
#: missing (some limits); a required piece that is missing; an optional one.
DOCTOR_TAGS = {"ok": "ok", "limited": "limited", "required": "MISSING", "optional": "missing"}


def _checked(name: str, check: Callable[[], Finding]) -> Finding:
    """``check()``'s finding, or one saying the check itself failed (doctor never dies)."""
    from .kernel import hostcheck

    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a broken probe is a finding, not a traceback
        return hostcheck.Finding(name, False, f"could not be checked: {type(exc).__name__}: {exc}",
                       "run doctor as root, or report this as a pytest-nsbox bug")


def doctor_findings(dirs: StateDirs, cgroup_parent: str | None) -> list[Finding]:
    """What ``doctor`` reports, in order: who runs, cgroups (where box cgroups would go
    and their limits), overlayfs (its upper layers on the run directory's filesystem),
    user namespaces, netem. Each a ``kernel.hostcheck.Finding``."""
    from .cgroups import hostinfo
    from .kernel import hostcheck, userns

    rootless = userns.rootless()
    uid = os.geteuid()
    who = (f"uid {uid} ({userns.user_name(uid)}), not root: boxes run rootless, in a user "
           f"namespace of their own" if rootless else "root (uid 0): boxes run as root")
    where = dirs.run
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    return [
        hostcheck.Finding("user", True, who),
        _checked("cgroups", lambda: hostinfo.finding(cgroup_parent)),
        _checked("overlayfs", lambda: hostcheck.overlay_finding(where, rootless=rootless)),
        _checked("user namespaces", lambda: hostcheck.userns_finding(rootless=rootless)),
        _checked("netem", hostcheck.netem_finding),
    ]


def format_doctor(findings: list[Finding], header: str) -> tuple[str, bool]:
    """The report: ``header``, one line per finding (status, name, what was found), a
    ``fix:`` line under it for each thing to change, and a verdict; and whether boxes can
    run (every required piece works)."""
    def tag(f: Finding) -> str:
        if f.ok:
            return DOCTOR_TAGS["limited" if f.fix else "ok"]
        return DOCTOR_TAGS["required" if f.required else "optional"]

    names = [f.name if f.ok or f.required else f"{f.name} (optional)" for f in findings]
    width = max(len(n) for n in names) + 2
    lines = [header]
    for f, name in zip(findings, names):
        lines.append(f"{tag(f):<8} {name:<{width}}{f.detail}".rstrip())
        for fix in f.fix.split(" | ") if f.fix else []:
            lines.append(f"{'':<8} fix: {fix}")
    usable = all(f.ok for f in findings if f.required)
    missing = [f.name for f in findings if not f.ok and not f.required]
    verdict = ("boxes can run here" if usable else
               "boxes cannot run here: change what the MISSING lines say")
    if usable and missing:
        verdict += f"; without {', '.join(missing)}"
    lines.append(verdict)
    return "\n".join(lines), usable


def cmd_doctor(args: argparse.Namespace, dirs: StateDirs) -> int:
    """What this host gives boxes and, for each missing piece, what to change; exit 1
    when boxes cannot run here."""
    import platform

    try:
        from importlib.metadata import version

        ours = version("pytest-nsbox")
    except Exception:  # noqa: BLE001 - not installed as a distribution: no version to show
        ours = "?"
    header = (f"pytest-nsbox {ours} doctor: Linux {platform.release()}, Python "
              f"{platform.python_version()}, {platform.machine()}")
    text, usable = format_doctor(doctor_findings(dirs, args.cgroup_parent), header)
    print(text)
    return 0 if usable else 1


# -- main --------------------------------------------------------------------------------------

def _backend(args: argparse.Namespace) -> Any:
    """The cgroup backend, or None where this host has none (ps then shows no memory)."""
    from .cgroups import detect

    try:
        return detect(parent=args.cgroup_parent)
    except NsboxError:
        return None


def _size(text: str) -> int:
    """A ``--chunk-size``: bytes, or binary units (``16M``); argparse reports a bad one."""
    from .units import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}; use e.g. 16M") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 byte; use e.g. 16M")
    return size


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="See, enter and clean up pytest-nsbox boxes.",
        epilog="Exit status: 0 done, 1 failed, 2 bad usage; enter: its command's status.")
    p.add_argument("--store", metavar="DIR",
                   help="image store (default /var/lib/nsbox, or $NSBOX_STORE)")
    p.add_argument("--run", metavar="DIR",
                   help="running boxes' directory (default /dev/shm/nsbox, else /run/nsbox, "
                        "or $NSBOX_RUN)")
    p.add_argument("--cgroup-parent", metavar="CGROUP",
                   help="the nsbox_cgroup_parent the boxes were made under (default: root)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ps = sub.add_parser("ps", help="list running and kept boxes",
                        description="Running boxes, then boxes kept by --nsbox-keep: id, "
                                    "name, image, state (running or kept), owner pid, age, "
                                    "memory in use.")
    ps.add_argument("-q", "--quiet", action="store_true", help="print only box ids")
    ps.set_defaults(func=cmd_ps)

    enter_p = sub.add_parser(
        "enter", help="run a shell (or CMD) inside a running box, like nsenter, or over a "
                      "kept box's layers",
        description="Run CMD (default /bin/sh) inside a running box: its namespaces, its "
                    "root and its cgroup, as root with every capability (root of its user "
                    "namespace for a rootless box), with the box's "
                    "environment and working directory. BOX is an id, a name or a unique "
                    "prefix of either. For a kept box, CMD runs the same way in a new box "
                    "over the kept box's image and read-write layer, under a fresh layer of "
                    "its own that is deleted when CMD exits: the kept layer is never "
                    "changed.")
    enter_p.add_argument("box", metavar="BOX")
    enter_p.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER,
                         help="command and arguments (after --, if they start with -)")
    enter_p.set_defaults(func=cmd_enter)

    gc_p = sub.add_parser(
        "gc", help="remove what crashed runs left behind",
        description="Remove boxes whose owner process is dead (their processes, cgroups, "
                    "mounts and layers), stale owner locks, half-written image layers and "
                    "network leftovers. Never touches a live owner's boxes.")
    gc_p.add_argument("-n", "--dry-run", action="store_true",
                      help="only say what would be removed")
    gc_p.add_argument("--kept", action="store_true",
                      help="also remove boxes kept for inspection (--nsbox-keep)")
    gc_p.set_defaults(func=cmd_gc)

    doctor = sub.add_parser(
        "doctor", help="what this host supports for boxes, and what to change",
        description="Check what boxes need here: who runs (root or rootless), cgroups (the "
                    "version, where box cgroups would go, which limits they can have), "
                    "overlayfs (and userxattr in a user namespace), user namespaces (and "
                    "the known sysctl blocks), sch_netem. Each missing piece gets a fix: "
                    "line. Exit status 1 when boxes cannot run here.")
    doctor.set_defaults(func=cmd_doctor)

    images = sub.add_parser("images", help="list, build, push, rm, prune images",
                            description="The image store.")
    images.set_defaults(func=cmd_images, images_action=None)
    isub = images.add_subparsers(dest="images_action", metavar="ACTION")
    isub.add_parser("list", help="list images (the default)")
    build = isub.add_parser("build", help="build a fixtures image by name, or the "
                                          "Containerfile at (or in) a path")
    build.add_argument("path", metavar="NAME_OR_PATH")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="ARG value (KEY alone: from the environment); repeatable")
    build.add_argument("--target", default=None, metavar="STAGE",
                       help="build this stage (default: the last)")
    build.add_argument("--image-cache", default=None, metavar="REGISTRY/REPO",
                       help="shared build cache: look steps up there before building them, "
                            "push them there after (as ini nsbox_image_cache)")
    push = isub.add_parser(
        "push", help="push an image to a registry (OCI distribution API)",
        description="Push image REF (a tag, id, fixtures image or any reference the marker "
                    "takes) to DEST (REGISTRY/REPOSITORY[:TAG], default tag latest): blobs "
                    "the registry has are skipped, blobs known in another repository of it "
                    "are mounted, the rest uploaded; then the manifest. Credentials as for "
                    "pull ($REGISTRY_AUTH_FILE, docker's config.json).")
    push.add_argument("ref", metavar="REF")
    push.add_argument("dest", metavar="DEST")
    push.add_argument("--chunk-size", type=_size, default=None, metavar="SIZE",
                      help="blobs larger than this go up in PATCH chunks of it (default 16M)")
    for sub_p in (build, push):
        sub_p.add_argument("--insecure-registry", action="append", default=[],
                           metavar="HOST:PORT",
                           help="reach this registry over plain http; repeatable (also "
                                "$NSBOX_INSECURE_REGISTRIES, comma-separated)")
    rm = isub.add_parser("rm", help="remove tags or images (by id); layers stay until prune")
    rm.add_argument("refs", metavar="REF", nargs="+")
    isub.add_parser("prune", help="remove layers no image (and no running box) uses")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dirs = StateDirs.default(store=args.store, run=args.run)
    try:
        return int(args.func(args, dirs))
    except KeyboardInterrupt:
        return 130
    except NsboxError as exc:
        print(f"nsbox: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        hint = "; run as root" if isinstance(exc, PermissionError) and os.geteuid() else ""
        print(f"nsbox: {args.command}: {exc.strerror or exc}{where}{hint}", file=sys.stderr)
    return 1
