"""The measurements of issue 6 besides the lifecycle table.

Each function measures one figure and returns plain numbers (milliseconds, bytes) or
raises ``Unavailable`` with the reason a feature cannot be measured on this checkout
(``network="private"`` or Containerfile builds not built yet): the report shows
``not available: <reason>`` instead of a number.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pytest_nsbox.kernel.fs import remove_tree

from .peers import PATH, Marks, Nsbox, Oci
from .workspace import Workspace


class Unavailable(Exception):
    """A feature this figure needs does not exist (yet) or cannot run here."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- images -------------------------------------------------------------------------------

def register_image(ref: str, layer_dirs: list[str]) -> str:
    """An image made of existing layer directories, known to this process's store.

    Through the store's ``resolvers`` (the path the ``pytest_nsbox_resolve_image`` hook
    takes): the layers are used in place, nothing is copied.
    """
    from pytest_nsbox.model.image import Image
    from pytest_nsbox.runtime.engine import default_engine

    ident = hashlib.sha256("\0".join([ref, *layer_dirs]).encode()).hexdigest()
    image = Image(ref=ref, id="sha256:" + ident,
                  layers=tuple(os.path.basename(d) for d in layer_dirs),
                  layer_dirs=tuple(layer_dirs), env={"PATH": PATH})
    store = default_engine().store
    store.resolvers.append(lambda wanted: image if wanted == ref else None)
    return ref


def fill_layer(path: str, total: int, file_size: int = 64 << 10, per_dir: int = 256) -> None:
    """A layer holding ``total`` bytes in files of ``file_size`` under ``/data``."""
    block = os.urandom(file_size)
    count = max(1, total // file_size)
    for i in range(count):
        d = os.path.join(path, "data", f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, 0o755)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(block)


def private_host(ws: Workspace) -> Any:
    """An ``Engine`` whose image store lives in the workspace (so nothing stays in the
    machine's store); boxes still go to the usual run directory and cgroups."""
    from pytest_nsbox.runtime.engine import Engine, default_engine
    from pytest_nsbox.state import StateDirs

    host = getattr(ws, "_private_host", None)
    if host is None:
        host = Engine(dirs=StateDirs(store=os.path.join(ws.disk, "store"),
                                   run=default_engine().dirs.run))
        ws._private_host = host  # type: ignore[attr-defined]
        ws.on_close(host.release_owner_lock)
    return host


IMAGE_CONTAINERFILE = "FROM busybox\nCOPY data /data\n"


def make_images(ws: Workspace, sizes: dict[str, int]) -> tuple[dict[str, str], Any, str]:
    """Images of busybox plus one layer of ``size`` bytes each: ``(refs, host, how)``.

    Built from a Containerfile (``FROM busybox``, ``COPY data /data``) by the image store,
    as a user's fixtures image would be; where the store cannot build yet, the layer
    directory is used in place through a resolver.
    """
    from pytest_nsbox.runtime.engine import default_engine

    folders = {}
    for label, size in sizes.items():
        slug = label.replace(" ", "").lower()
        folder = os.path.join(ws.disk, "images", slug)
        os.makedirs(folder)
        fill_layer(folder, size)
        with open(os.path.join(folder, "Containerfile"), "w", encoding="utf-8") as f:
            f.write(IMAGE_CONTAINERFILE)
        folders[label] = (slug, folder)
    try:
        host = private_host(ws)
        if not hasattr(host.store, "build"):
            raise Unavailable("the image store cannot build Containerfiles yet")
        refs = {}
        for label, (slug, folder) in folders.items():
            image = host.store.build(folder, tag=f"{ws.tag}-{slug}")
            refs[label] = image.ref
            remove_tree(os.path.join(folder, "data"))  # the store holds its own copy now
        return refs, host, "built from a Containerfile (`FROM busybox`, `COPY data /data`)"
    except Exception as exc:  # noqa: BLE001 - any failure of the store path: fall back
        why = first_line(exc)
    refs = {label: register_image(f"{ws.tag}-{slug}", [ws.layers[0], folder])
            for label, (slug, folder) in folders.items()}
    return refs, default_engine(), f"layer dirs used in place (the store could not build: {why})"


def image_start(ws: Workspace, sizes: dict[str, int],
                rounds: int) -> tuple[dict[str, list[float]], str]:
    """Start time (``Box(...)`` until it returns, ms) of images of the given sizes,
    taking turns, one box each per round; and how the images were made."""
    from pytest_nsbox.runtime.box import Box

    refs, host, how = make_images(ws, sizes)
    out: dict[str, list[float]] = {label: [] for label in sizes}
    for r in range(rounds + 1):
        for label in (list(refs) if r % 2 == 0 else list(reversed(refs))):
            t0 = time.perf_counter()
            box = Box(image=refs[label], memory="64M", pids=64, engine=host)
            elapsed = (time.perf_counter() - t0) * 1000
            box.close()
            if r:  # the first round warms the page cache for the image's top directories
                out[label].append(elapsed)
    return out, how


# -- run() against exec -------------------------------------------------------------------

def run_vs_exec(image: str, crun: Oci | None, n: int) -> tuple[list[float], list[float] | str]:
    """``Box.run(["true"])`` in one live box against ``crun exec ID true``, alternating."""
    from pytest_nsbox.runtime.box import Box

    ours: list[float] = []
    theirs: list[float] = []
    status = ""
    live = None
    if crun is not None:
        try:
            live = crun.start_live()
        except Exception as exc:  # noqa: BLE001 - a peer failing is reported, not fatal
            status = f"failed: {first_line(exc)}"
    else:
        status = "not installed"
    with Box(image=image, memory="64M", pids=64) as box:
        for i in range(n + 3):
            t0 = time.perf_counter()
            result = box.run(["true"])
            elapsed = (time.perf_counter() - t0) * 1000
            if result.returncode != 0:
                raise RuntimeError(f"run(['true']) exited {result.returncode}: {result.stderr}")
            if i >= 3:
                ours.append(elapsed)
            if live is not None and crun is not None:
                try:
                    t = crun.exec_live(live[1], ["true"]) * 1000
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    status = f"failed: {first_line(exc)}"
                    crun.stop_live(*live)
                    live = None
                else:
                    if i >= 3:
                        theirs.append(t)
    if live is not None and crun is not None:
        crun.stop_live(*live)
    return ours, (theirs if not status else status)


# -- memory -------------------------------------------------------------------------------

def _rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


@dataclass
class Memory:
    boxes: int
    pss_per_box: float  # bytes
    uss_per_box: float
    zygote_pss: float
    spare_pss: float


def idle_memory(image: str, n: int) -> Memory:
    """Start ``n`` boxes, let them idle, and sum PSS (and USS) over each box's processes."""
    from pytest_nsbox.runtime import client
    from pytest_nsbox.runtime.box import Box

    boxes = []
    try:
        for _ in range(n):
            boxes.append(Box(image=image, memory="64M", pids=64))
        time.sleep(0.3)
        kids = _children()
        pss = uss = 0
        box_pids = set()
        for box in boxes:
            for pid in _tree(box.pid, kids):
                box_pids.add(pid)
                roll = _rollup(pid)
                pss += roll.get("Pss", 0)
                uss += roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)
        zpid = client.zygote().proc.pid
        zygote = _rollup(zpid).get("Pss", 0)
        spares = [p for p in kids.get(zpid, []) if p not in box_pids]
        spare = sum(_rollup(p).get("Pss", 0) for p in spares)
    finally:
        for box in boxes:
            box.close()
    return Memory(n, pss / n, uss / n, zygote, spare)


# -- optional features --------------------------------------------------------------------

@dataclass
class NetworkRun:
    total: list[float] = field(default_factory=list)
    attach: list[float] = field(default_factory=list)  # after the box is ready: the network
    close: list[float] = field(default_factory=list)


def private_network(image: str, rounds: int, tag: str) -> NetworkRun:
    """Lifecycle of a ``network="private"`` box, one network (group) per box, like a test."""
    from pytest_nsbox.runtime.box import Box

    out = NetworkRun()
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        try:
            box = Box(image=image, memory="64M", pids=64, network="private",
                      group=f"{tag}-net-{r}")
        except Exception as exc:  # the first failure says "not available"; later ones raise
            if r == 0:
                raise Unavailable(first_line(exc)) from exc
            raise
        started = time.monotonic()
        marks = getattr(box, "start_marks", None)
        try:
            result = box.run(["/bin/true"])
        finally:
            t_close = time.perf_counter()
            box.close()
        t1 = time.perf_counter()
        if result.returncode != 0:
            raise RuntimeError(f"/bin/true exited {result.returncode}: {result.stderr}")
        if r:
            out.total.append((t1 - t0) * 1000)
            out.close.append((t1 - t_close) * 1000)
            if marks:
                out.attach.append((started - marks[-1][1]) * 1000)
    return out


CONTAINERFILE = """\
FROM busybox
RUN echo built by ci/bench > /etc/nsbox-bench && mkdir -p /srv/app
COPY app.txt /srv/app/app.txt
ENV NSBOX_BENCH=1
WORKDIR /srv/app
"""


def containerfile_rebuild(ws: Workspace, rounds: int) -> tuple[float, list[float]]:
    """A Containerfile built once (cold), then rebuilt ``rounds`` times with every layer
    cached; in a store of the bench's own so nothing stays in the machine's store."""
    try:
        from pytest_nsbox.images.build import default_builder
        from pytest_nsbox.images.store import ImageStore
    except ImportError as exc:
        raise Unavailable(first_line(exc)) from exc
    if not hasattr(ImageStore, "build"):
        raise Unavailable("the image store cannot build Containerfiles yet")
    folder = os.path.join(ws.disk, "containerfile", "benchimg")
    os.makedirs(folder)
    with open(os.path.join(folder, "Containerfile"), "w", encoding="utf-8") as f:
        f.write(CONTAINERFILE)
    with open(os.path.join(folder, "app.txt"), "w", encoding="utf-8") as f:
        f.write("an application file\n" * 100)
    dirs = private_host(ws).dirs
    store = ImageStore(dirs, builder=default_builder())
    t0 = time.perf_counter()
    try:
        store.build(folder)
    except Exception as exc:  # a store that cannot build says why
        raise Unavailable(first_line(exc)) from exc
    cold = (time.perf_counter() - t0) * 1000
    samples = []
    for _ in range(rounds):
        # no in-process cache: what a new pytest process pays
        fresh = ImageStore(dirs, builder=default_builder())
        t0 = time.perf_counter()
        fresh.build(folder)
        samples.append((time.perf_counter() - t0) * 1000)
    return cold, samples


# -- where the time goes ------------------------------------------------------------------

@dataclass
class Breakdown:
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, median ms)
    detail: list[tuple[str, float]] = field(default_factory=list)  # mount plan, traced
    total: float = 0.0
    rounds: int = 0
    traced_rounds: int = 0
    suite: dict[str, float] = field(default_factory=dict)  # start steps, in a pytest suite
    suite_boxes: int = 0


COARSE_BEFORE = "owner: dirs, init layer, cgroup, plan"
COARSE_AFTER = "owner: ready to return (owner.json, network)"


def _steps(marks: list[Marks]) -> tuple[dict[str, list[float]], list[float]]:
    steps: dict[str, list[float]] = {}
    totals = []

    def add(name: str, seconds: float) -> None:
        steps.setdefault(name, []).append(seconds * 1000)

    for m in marks:
        sm = m.start_marks
        if not sm:
            add("start (no marks)", m.started - m.before)
        else:
            add(COARSE_BEFORE, sm[0][1] - m.before)
            seen: dict[str, int] = {}
            for (_prev, t_prev), (name, t) in itertools.pairwise(sm):
                seen[name] = seen.get(name, 0) + 1
                label = name if seen[name] == 1 else f"{name} #{seen[name]}"
                add(label, t - t_prev)
            add(COARSE_AFTER, m.started - sm[-1][1])
        add("run(['/bin/true'])", m.ran - m.started)
        add("close()", m.closed - m.ran)
        totals.append((m.closed - m.before) * 1000)
    return steps, totals


def start_steps(marks: list[list[tuple[str, float]]]) -> dict[str, float]:
    """Median ms per step of ``Box.start_marks`` lists (boxes started by the plugin)."""
    steps: dict[str, list[float]] = {}
    for sm in marks:
        for (_prev, t_prev), (name, t) in itertools.pairwise(sm):
            steps.setdefault(name, []).append((t - t_prev) * 1000)
    return {name: statistics.median(v) for name, v in steps.items()}


def breakdown(marks: list[Marks], traced: list[Marks]) -> Breakdown:
    """Per-step medians: the owner's part before the request, each step of
    ``Box.start_marks`` (zygote hand-off, cgroup join, namespaces, overlay, mount plan,
    pivot_root, hostname, ...), then ``run`` and ``close``; from the lifecycles of the
    interleaved rounds (``marks``). ``detail`` splits the mount plan into its operations,
    from lifecycles run back to back with ``NSBOX_TRACE_OPS=1`` (``traced``)."""
    steps, totals = _steps(marks)
    traced_steps, _ = _steps(traced)
    detail = [(name, statistics.median(v)) for name, v in traced_steps.items()
              if name not in steps]
    return Breakdown([(name, statistics.median(v)) for name, v in steps.items()], detail,
                     statistics.median(totals) if totals else 0.0, len(marks), len(traced))


def traced_marks(nsbox: Nsbox, rounds: int) -> list[Marks]:
    """Lifecycles with ``NSBOX_TRACE_OPS=1`` (one mark per mount step)."""
    old = os.environ.get("NSBOX_TRACE_OPS")
    os.environ["NSBOX_TRACE_OPS"] = "1"
    try:
        first = len(nsbox.marks)
        for _ in range(rounds + 1):
            nsbox.lifecycle()
        return nsbox.marks[first + 1:]
    finally:
        if old is None:
            del os.environ["NSBOX_TRACE_OPS"]
        else:
            os.environ["NSBOX_TRACE_OPS"] = old


def profile(nsbox: Nsbox, rounds: int, path: str) -> None:
    """cProfile of the owner's side of ``rounds`` lifecycles, top functions to ``path``."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        nsbox.lifecycle()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# cProfile of the owner's side of {rounds} nsbox lifecycles\n")
        f.write(out.getvalue())

