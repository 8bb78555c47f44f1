"""``ci/bench [--quick] [--install-peers] [--rounds N] [--out DIR] [--profile]``.

Exit status 0 when every nsbox figure was measured (a target missed is a finding, not an
error; a peer missing or failing is reported in the table), 1 when nsbox itself failed or
the bench left something behind, 2 for bad usage or a host that cannot run boxes.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import figures, isolate, peers, report, workspace
from .report import Figure, Results
from .stats import Summary, fmt_ms
from .suite import NOBOX_TESTS, SuiteFailed, Suites, mean_or_none, median_or_none

IMAGES = (("10 MB", 10 << 20), ("1 GB", 1 << 30))
QUICK_IMAGES = (("10 MB", 10 << 20), ("100 MB", 100 << 20))  # no GB of writes in ci/test
WARMUP = 2
SEEN_SHOWN = 8  # other test runs named in the load line (the rest are counted)
NO_BOX_FIGURE = "session with no boxes: the plugin against `-p no:nsbox`"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Plan:
    """How much of everything to measure."""

    rounds: int
    exec_runs: int
    suite_tests: int
    suite_reps: int
    image_rounds: int
    image_sizes: tuple[tuple[str, int], ...]
    idle_boxes: int
    net_rounds: int
    build_rounds: int
    trace_rounds: int
    session_rounds: int
    isolate_tests: int  # tests in each suite of the whole-test isolation figures
    isolate_rounds: int  # interleaved rounds of whole sessions per suite

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Plan:
        if quick:
            return cls(rounds or 5, 20, 50, 1, 3, QUICK_IMAGES, 5, 3, 2, 3, 5, 20, 1)
        return cls(rounds or 60, 300, 500, 3, 30, IMAGES, 20, 30, 10, 30, 40, 500, 3)


def target_text(ms: float | None) -> str:
    """A figure's target cell for an upper bound in ms (empty for none)."""
    return "" if ms is None else f"≤ {ms:g} ms"


def say(line: str) -> None:
    print(f"ci/bench: {line}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ci/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a few rounds of everything (< 2 minutes); peers optional")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install crun, runc, bubblewrap and util-linux first")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved lifecycle rounds (default 60, --quick 5)")
    p.add_argument("--out", default=os.path.join(REPO, "bench-results"),
                   help="where results.md and chart.png go (default bench-results/)")
    p.add_argument("--profile", action="store_true",
                   help="also write profile.txt: cProfile of the owner side of nsbox's lifecycle")
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


# -- host facts ---------------------------------------------------------------------------

def install_peers() -> None:
    missing = [pkg for pkg in peers.PEER_PACKAGES
               if "install ok installed" not in subprocess.run(
                   ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                   text=True, check=False).stdout]
    if not missing:
        say("peers already installed")
        return
    say(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=sys.stderr)


def _busy_jiffies() -> int:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return fields[0] + fields[1] + fields[2] + sum(fields[5:8])


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _processes() -> dict[int, tuple[int, int]]:
    """pid: (ppid, utime + stime in clock ticks) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    fields = f.read().rpartition(")")[2].split()
                out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _kernel_ticks(procs: dict[int, tuple[int, int]]) -> dict[int, int]:
    return {pid: ticks for pid, (ppid, ticks) in procs.items() if pid == 2 or ppid == 2}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class LoadWatch:
    """The machine's load while the bench runs: load averages, the CPU other processes
    used meanwhile (kernel threads apart: they also do our own namespace and cgroup
    teardown), and other test runs seen."""

    def __init__(self) -> None:
        self.before = os.getloadavg()
        self.peak = self.before[0]
        self.t0 = time.monotonic()
        self.busy0 = _busy_jiffies()
        self.own0 = _own_cpu()
        self.kernel0 = _kernel_ticks(_processes())
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nsbox-bench-load",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(2.0):
            self.peak = max(self.peak, os.getloadavg()[0])
            procs = _processes()
            ours, todo = {os.getpid()}, [os.getpid()]
            kids: dict[int, list[int]] = {}
            for pid, (ppid, _t) in procs.items():
                kids.setdefault(ppid, []).append(pid)
            while todo:
                for kid in kids.get(todo.pop(), []):
                    ours.add(kid)
                    todo.append(kid)
            for pid in procs.keys() - ours - self.seen.keys():
                cmd = _cmdline(pid)
                if re.search(r"pytest|ci/test|ci/bench|nsbox-init", cmd):
                    self.seen[pid] = cmd[:80]

    def finish(self) -> str:
        """Call after every child has been waited for (their CPU is then ours)."""
        self._stop.set()
        self._thread.join()
        after = os.getloadavg()
        wall = time.monotonic() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        kernel1 = _kernel_ticks(_processes())
        kernel = sum(t - self.kernel0.get(pid, 0) for pid, t in kernel1.items()) / hz
        others = (_busy_jiffies() - self.busy0) / hz - (_own_cpu() - self.own0) - kernel
        cpus = os.cpu_count() or 1

        def share(seconds: float) -> str:
            return f"{max(0.0, seconds) / (wall * cpus) * 100:.0f}%"

        seen = sorted(set(self.seen.values()))
        more = f" and {len(seen) - SEEN_SHOWN} more" if len(seen) > SEEN_SHOWN else ""
        runs = "; other test runs seen: " + (", ".join(
            f"`{c}`" for c in seen[:SEEN_SHOWN]) + more if seen else "none")
        return (f"load average before {self.before[0]:.2f} {self.before[1]:.2f} "
                f"{self.before[2]:.2f}; highest 1-min during the run {self.peak:.2f} (the "
                f"bench's own processes count); after {after[0]:.2f} {after[1]:.2f} "
                f"{after[2]:.2f}; CPU of the {cpus} CPUs over {wall:.0f} s used by other "
                f"processes {share(others)}, by kernel threads {share(kernel)}{runs}")


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--",
                                "pytest_nsbox"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
    except OSError:
        return "?"
    return f"{sha}{' + uncommitted changes in pytest_nsbox/' if dirty else ''}" or "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# -- the run ------------------------------------------------------------------------------

class Bench:
    def __init__(self, ws: workspace.Workspace, plan: Plan, args: argparse.Namespace,
                 results: Results) -> None:
        self.ws = ws
        self.plan = plan
        self.args = args
        self.results = results

    def figure(self, name: str, measure: Callable[[], Figure], target: str = "") -> None:
        """Measure one figure; a missing feature or a failure becomes its row's text."""
        say(f"measuring: {name}")
        t0 = time.monotonic()
        try:
            fig = measure()
        except figures.Unavailable as exc:
            fig = Figure(name, f"not available: {exc}", target)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one figure failing must not stop the rest
            self.results.errors.append(f"{name}: {figures.first_line(exc)}")
            traceback.print_exc()
            fig = Figure(name, f"failed: {figures.first_line(exc)}", target)
        self.results.figures.append(fig)
        say(f"  {fig.shown} ({time.monotonic() - t0:.1f} s)")

    def run(self) -> None:
        from pytest_nsbox.runtime.engine import default_engine

        plan, ws, results = self.plan, self.ws, self.results
        busybox = default_engine().store.get("busybox").layer_dirs[0]
        ws.build_layers(busybox)
        image = figures.register_image(f"{ws.tag}-busybox", ws.layers)

        # 1. the lifecycle, interleaved
        self.nsbox = nsbox = peers.Nsbox(ws, image)
        runtimes: list[peers.Runtime] = [nsbox]
        skipped: dict[str, peers.LifecycleResult] = {}
        self.crun: peers.Crun | None = None
        for cls in peers.PEERS:
            rt = cls(ws)
            why = rt.missing()
            if why:
                skipped[rt.name] = peers.LifecycleResult(rt.name, rt.how, "", why)
                if self.args.install_peers:
                    results.errors.append(f"{rt.name}: {why}, after --install-peers")
                continue
            rt.setup()
            runtimes.append(rt)
            if isinstance(rt, peers.Crun):
                self.crun = rt
        say(f"lifecycle: {plan.rounds} interleaved rounds of "
            f"{', '.join(rt.name for rt in runtimes)}")
        lifecycle = peers.interleaved(runtimes, plan.rounds, warmup=WARMUP, progress=say)
        counted = nsbox.marks[WARMUP:]
        results.lifecycle = {**lifecycle, **skipped}
        for rt in runtimes:
            rt.close()
        self.lifecycle_figure()

        # 2. where the time goes
        say("breakdown: traced nsbox lifecycles")
        results.breakdown = figures.breakdown(counted,
                                              figures.traced_marks(nsbox, plan.trace_rounds))

        self.figure("`run(['true'])` in a live box", lambda: self.exec_figure(image), "≤ 2 ms")
        self.suite_figures()
        self.isolate_figures()
        (small, _), (big, _) = plan.image_sizes
        self.figure(f"start time, {big} image against {small}",
                    lambda: self.image_figure(f"start time, {big} image against {small}"),
                    f"within 10% of {small}")
        self.figure("PSS per idle box", lambda: self.memory_figure(image), "≤ 1 MiB")
        self.figure("`network='private'` box lifecycle", lambda: self.network_figure(image),
                    "≤ 15 ms")
        self.figure("Containerfile rebuild, every layer cached", self.build_figure)
        if self.args.profile:
            path = os.path.join(self.args.out, "profile.txt")
            say(f"profile: {path}")
            os.makedirs(self.args.out, exist_ok=True)
            figures.profile(nsbox, max(plan.rounds, 20), path)

    def lifecycle_figure(self) -> None:
        ours = self.results.summary("nsbox")
        crun = self.results.summary("crun")
        name = "lifecycle: nsbox / crun (medians)"
        if ours is None:
            return
        if crun is None:
            status = self.results.lifecycle["crun"].status
            self.results.figures.append(Figure(
                name, f"nsbox {fmt_ms(ours.median)} ms; crun {status}", "≤ 0.33"))
            return
        ratio = ours.median / crun.median
        self.results.figures.append(Figure(
            name, f"{ratio:.2f} (nsbox {fmt_ms(ours.median)} ms, crun {fmt_ms(crun.median)} ms)",
            "≤ 0.33", ratio <= 1 / 3, score=ratio * 3))

    def exec_figure(self, image: str) -> Figure:
        ours, theirs = figures.run_vs_exec(image, self.crun, self.plan.exec_runs)
        s = Summary.of(ours)
        self.results.exec_samples["nsbox run()"] = ours
        if isinstance(theirs, list):
            self.results.exec_samples["crun exec"] = theirs
            t = Summary.of(theirs)
            other = (f"crun exec {fmt_ms(t.median)} ms, p90 {fmt_ms(t.p90)}; "
                     f"ratio {s.median / t.median:.2f}")
        else:
            other = f"crun exec: {theirs}"
        return Figure("`run(['true'])` in a live box",
                      f"{fmt_ms(s.median)} ms, p90 {fmt_ms(s.p90)}", "≤ 2 ms", s.median <= 2,
                      note=f"{other}; {len(ours)} runs", score=s.median / 2)

    def suite_figures(self) -> None:
        plan = self.plan
        n = plan.suite_tests
        suites = Suites(os.path.join(self.ws.disk, "suites"), n)
        state: dict[str, Any] = {}

        def overhead() -> Figure:
            box, plain, per_test = suites.overhead(plan.suite_reps)
            state["box"] = box
            if self.results.breakdown is not None and box.marks:
                self.results.breakdown.suite = figures.start_steps(box.marks)
                self.results.breakdown.suite_boxes = len(box.marks)
            return Figure(f"overhead per sandboxed test ({n} tests)", f"{per_test:.2f} ms",
                          "≤ 5 ms", per_test <= 5,
                          note=f"box suite {box.seconds:.2f} s, plain {plain.seconds:.2f} s; "
                               f"{phases(box, plain, per_test)}",
                          score=max(per_test, 0) / 5)

        def phases(box: Any, plain: Any, per_test: float) -> str:
            """Where the overhead goes: the tests' own phases, and the rest (the session)."""
            in_tests = Suites.phases_ms(box) - Suites.phases_ms(plain)
            start = mean_or_none(box.start_ms)
            inner = f", of which the box's start_marks {fmt_ms(start)}" if start else ""
            return (f"per test (means): setup {fmt_ms(mean_or_none(box.setup_ms))} ms{inner}, "
                    f"teardown {fmt_ms(mean_or_none(box.teardown_ms))} ms; the tests' phases "
                    f"{fmt_ms(in_tests)} ms more than plain ones, the other "
                    f"{fmt_ms(per_test - in_tests)} ms per test are the session's own "
                    f"(zygote, images, plugin hooks outside the phases)")

        def pool() -> Figure:
            try:
                box, plain, per_test = suites.overhead(plan.suite_reps, "-o", "nsbox_pool=2")
            except SuiteFailed as exc:
                if "nsbox_pool" in str(exc):
                    raise figures.Unavailable("ini nsbox_pool is not known") from exc
                raise
            on = median_or_none(box.setup_ms)
            off = median_or_none(state["box"].setup_ms) if "box" in state else None
            return Figure("warm pool (`nsbox_pool = 2`): overhead per test",
                          f"{per_test:.2f} ms",
                          note=f"setup seen by the test (median): pool on {fmt_ms(on)} ms, off "
                               f"{fmt_ms(off)} ms; {phases(box, plain, per_test)}")

        def xdist() -> Figure:
            box = suites.run("box", "-n", "2")
            plain = suites.run("plain", "-n", "2")
            serial = state.get("box")
            ref = f"; serial {n / serial.seconds:.0f} boxes/s" if serial else ""
            return Figure(f"`pytest -n 2` throughput ({n} box tests)",
                          f"{n / box.seconds:.0f} boxes/s",
                          note=f"box suite {box.seconds:.2f} s, plain suite {plain.seconds:.2f} "
                               f"s{ref}; wall time including pytest and worker start-up")

        def no_box() -> Figure:
            on, off = suites.no_box_session(plan.session_rounds)
            s_on, s_off = Summary.of(on), Summary.of(off)
            cost = s_on.median - s_off.median
            paired = statistics.median(a - b for a, b in zip(on, off))
            return Figure(NO_BOX_FIGURE, f"{cost:+.1f} ms", "≤ 10 ms", cost <= 10,
                          note=f"medians of {s_on.n} interleaved sessions of {NOBOX_TESTS} "
                               f"plain tests: {fmt_ms(s_on.median)} ms with the plugin, "
                               f"{fmt_ms(s_off.median)} ms with `-p no:nsbox`; median of "
                               f"the rounds' differences {paired:+.1f} ms; bytecode cached "
                               f"as when installed",
                          score=max(cost, 0) / 10)

        self.figure(NO_BOX_FIGURE, no_box, "≤ 10 ms")
        self.figure(f"overhead per sandboxed test ({n} tests)", overhead, "≤ 5 ms")
        self.figure("warm pool (`nsbox_pool = 2`): overhead per test", pool)
        self.figure(f"`pytest -n 2` throughput ({n} box tests)", xdist)

    def isolate_figures(self) -> None:
        """Issue 11's figures: what ``--nsbox-isolate`` adds per test to a trivial suite and
        to one with ``tmp_path`` and a session fixture, and pytest-forked's ``--forked``
        on the same sessions (the peer). One set of interleaved rounds per suite serves
        both rows."""
        plan = self.plan
        n = plan.isolate_tests
        suites = isolate.IsolateSuites(os.path.join(self.ws.disk, "isolate"), n)
        forked = isolate.forked_version()
        modes = ["plain", "isolated"] + (["forked"] if forked else [])
        for suite in isolate.SUITES:
            what = f"{n} {isolate.DESCRIBED[suite]}"
            runs = functools.cache(functools.partial(
                suites.rounds, suite, modes, plan.isolate_rounds, say))
            for mode, name, goal in (
                    ("isolated", f"`--nsbox-isolate`: extra cost per test ({what})",
                     isolate.GOAL_MS),
                    ("forked", f"pytest-forked `--forked`: extra cost per test ({what})", None)):
                self.figure(name, functools.partial(self.extra_figure, name, goal, mode, suite,
                                                    n, runs, forked), target_text(goal))

    @staticmethod
    def extra_figure(name: str, goal: float | None, mode: str, suite: str, n: int,
                     runs: Callable[[], tuple[dict[str, list[isolate.Session]], dict[str, str]]],
                     forked: str | None) -> Figure:
        """One row of the isolation figures: the median over rounds of ``mode``'s extra
        cost per test in ms (``goal``: the most it should be, or None), how it was
        measured and where the time goes in the note."""
        if mode == "forked" and not forked:
            raise figures.Unavailable(
                "pytest-forked is not installed (ci/bench installs the bench extra)")
        sessions, failed = runs()
        for m in ("plain", mode):
            if m in failed:
                raise SuiteFailed(failed[m])
        extra = isolate.Extra.of(sessions[mode], sessions["plain"], n)
        per_test = (f"per test, `logstart`->`logfinish` in the outer process: extra median "
                    f"{fmt_ms(extra.per_test.median)} ms, p90 {fmt_ms(extra.per_test.p90)}"
                    if extra.per_test else
                    "no per-test timestamps (the outer process logged no `logstart`/"
                    "`logfinish`)")
        outside = (f"; outside the tests (start-up, collection, wind-down) "
                   f"{statistics.median(extra.outside_s):+.2f} s per session"
                   if extra.outside_s else "")
        if outside and extra.startup_s:
            outside += (f", of which before the first test "
                        f"{statistics.median(extra.startup_s):+.2f} s")
        setups = (f"; session fixture setups: {extra.setups_text()}"
                  if suite == "fixtures" else "")
        peer = ""
        if mode == "forked":
            shim = (", its reports' `NodeId` sent as text by the suite's conftest (pytest "
                    "≥ 9.2)" if isolate.forked_needs_nodeid_shim() else "")
            peer = f"; pytest-forked {forked}{shim}"
        value = extra.median_ms
        whole = f"(t_{mode} - t_plain) / {extra.n} of whole sessions"
        how = (f"one round of {whole}" if len(extra.rounds_ms) == 1 else
               f"median of {len(extra.rounds_ms)} interleaved rounds of {whole}: "
               f"{', '.join(fmt_ms(r) for r in extra.rounds_ms)} ms")
        medians = " (medians)" if len(extra.rounds_ms) > 1 else ""
        return Figure(name, f"{fmt_ms(value)} ms", target_text(goal),
                      value <= goal if goal is not None else None,
                      note=f"{how}; sessions{medians} {mode} {extra.mode_s:.2f} s, plain "
                           f"{extra.plain_s:.2f} s; {per_test}{outside}{setups}{peer}",
                      score=max(value, 0) / goal if goal is not None else None)

    def image_figure(self, name: str) -> Figure:
        sizes = dict(self.plan.image_sizes)
        out, how = figures.image_start(self.ws, sizes, self.plan.image_rounds)
        (small_label, small), (big_label, big) = [(k, Summary.of(v)) for k, v in out.items()]
        diff = big.median / small.median - 1
        return Figure(name, f"{diff * 100:+.1f}%", f"within 10% of {small_label}",
                      abs(diff) <= 0.10,
                      note=f"{small_label} {fmt_ms(small.median)} ms, {big_label} "
                           f"{fmt_ms(big.median)} ms, `Box()` until ready, medians of "
                           f"{small.n}; {how}", score=abs(diff) / 0.10)

    def memory_figure(self, image: str) -> Figure:
        m = figures.idle_memory(image, self.plan.idle_boxes)
        mib = 1 << 20
        return Figure("PSS per idle box", f"{m.pss_per_box / mib:.2f} MiB", "≤ 1 MiB",
                      m.pss_per_box <= mib,
                      note=f"{m.boxes} idle boxes; USS {m.uss_per_box / mib:.2f} MiB per box; "
                           f"zygote PSS {m.zygote_pss / mib:.2f} MiB, its spare "
                           f"{m.spare_pss / mib:.2f} MiB", score=m.pss_per_box / mib)

    def network_figure(self, image: str) -> Figure:
        run = figures.private_network(image, self.plan.net_rounds, self.ws.tag)
        s = Summary.of(run.total)
        attach = f"network attach after ready {fmt_ms(median_or_none(run.attach))} ms, "
        return Figure("`network='private'` box lifecycle", f"{fmt_ms(s.median)} ms",
                      "≤ 15 ms", s.median <= 15,
                      note=f"p90 {fmt_ms(s.p90)} ms; medians: {attach if run.attach else ''}"
                           f"close {fmt_ms(median_or_none(run.close))} ms; a new network per "
                           f"box, like a test", score=s.median / 15)

    def build_figure(self) -> Figure:
        cold, samples = figures.containerfile_rebuild(self.ws, self.plan.build_rounds)
        s = Summary.of(samples)
        return Figure("Containerfile rebuild, every layer cached", f"{fmt_ms(s.median)} ms",
                      note=f"first build {fmt_ms(cold)} ms; 2 cached layers (RUN, COPY) on "
                           f"busybox")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say("needs root (boxes, cgroups, mounts)")
        return 2
    from pytest_nsbox.errors import HostNotSupported
    from pytest_nsbox.runtime.engine import check_host

    try:
        check_host()
    except HostNotSupported as exc:
        say(f"this host cannot run boxes: {exc}")
        return 2
    if args.install_peers:
        install_peers()
    plan = Plan.make(args.quick, args.rounds)
    for problem in workspace.sweep_dead():
        say(f"leftover of an earlier bench: {problem}")
    ns_note = workspace.enter_private_mount_namespace()
    # SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = Results()
    load = LoadWatch()
    started = datetime.datetime.now(datetime.timezone.utc)
    ws = workspace.Workspace()
    say(f"workspace {ws.tag}: {ws.fast}, {ws.disk}")
    mode = "quick" if args.quick else "full"
    try:
        Bench(ws, plan, args, results).run()
    except KeyboardInterrupt:
        results.errors.append("interrupted")
    except Exception as exc:  # noqa: BLE001 - still clean up and write what was measured
        traceback.print_exc()
        results.errors.append(f"bench failed: {figures.first_line(exc)}")
    finally:
        from pytest_nsbox.runtime import client

        client.shutdown()
        problems = ws.close()
        results.errors += [f"cleanup: {p}" for p in problems]
        results.errors += [f"left behind: {p}" for p in workspace.leftovers(ws.tag)]
    load_text = load.finish()
    uname = os.uname()
    results.meta = [
        ("run", f"{mode}, {started:%Y-%m-%d %H:%M} UTC, commit {_commit()}"),
        ("host", (f"Linux {uname.release} {uname.machine}, {os.cpu_count()} CPUs "
                  f"({_cpu_model()}), cgroups "
                  f"{'v2' if workspace.cgroup_v2() else 'v1 (hybrid)'}; Python "
                  f"{platform.python_version()}")),
        ("load", load_text),
        ("rounds", (f"{plan.rounds} interleaved lifecycle rounds (+{WARMUP} warm-up), "
                    f"{plan.exec_runs} commands, {plan.suite_tests}-test suites x "
                    f"{plan.suite_reps}, {plan.session_rounds} no-box sessions each way, "
                    f"{plan.isolate_rounds} rounds of {plan.isolate_tests}-test sessions "
                    f"per isolation suite")),
        ("where", ("peers' uppers, bundles and state on tmpfs (/dev/shm/nsbox-bench-*), "
                   "their layers on disk (/var/tmp/nsbox-bench-*), as nsbox keeps uppers in "
                   "/dev/shm/nsbox and layers in /var/lib/nsbox; " + ns_note)),
    ]
    text = report.markdown(results)
    os.makedirs(args.out, exist_ok=True)
    chart = os.path.join(args.out, "chart.png")
    try:
        report.chart(results, chart)
    except Exception as exc:  # noqa: BLE001 - the table is still worth having
        results.errors.append(f"chart: {figures.first_line(exc)}")
        text = report.markdown(results)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    say(f"wrote {os.path.join(args.out, 'results.md')} and {chart}")
    return 1 if results.errors else 0
