"""The bench's output: ``results.md`` (also printed) and ``chart.png``."""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field

from .figures import Breakdown
from .peers import LifecycleResult
from .stats import Summary, fmt_ms


#: The chart's figures panel draws measured / target up to this (a longer bar is cut).
SCORE_CAP = 4.0


@dataclass
class Figure:
    """One row of the figures table: a measured value against the issue's target."""

    name: str
    shown: str  # the measured value as text, or "not available: ..." / "failed: ..."
    target: str = ""
    met: bool | None = None  # None: no target, or nothing measured
    note: str = ""
    # For the chart: measured / target (lower is better; 1.0 is the target).
    score: float | None = None


@dataclass
class Results:
    meta: list[tuple[str, str]] = field(default_factory=list)
    lifecycle: dict[str, LifecycleResult] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    breakdown: Breakdown | None = None
    exec_samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, name: str) -> Summary | None:
        res = self.lifecycle.get(name)
        if res is None or not res.samples:
            return None
        return Summary.of(res.samples)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: Results) -> str:
    out = ["# ci/bench results", ""]
    for key, value in results.meta:
        out.append(f"- {key}: {value}")
    out += ["", "## Box lifecycle",
            "",
            ("Fresh overlay over two busybox layers, 64M memory (swap off) + 64 pids limits in "
             "a cgroup, PID/mount/UTS/IPC/net namespaces, `/proc`, tmpfs `/dev`, run "
             "`/bin/true`, full teardown. Interleaved rounds (each round runs every runtime "
             "once, order rotated); wall time in ms."),
            "",
            "| runtime | median ms | p90 ms | nsbox / runtime (median) | version | how |",
            "|---|---:|---:|---:|---|---|"]
    ours = results.summary("nsbox")
    for name, res in results.lifecycle.items():
        s = results.summary(name)
        if s is None:
            out.append(f"| {name} | {_cell(res.status)} | | | {_cell(res.version)} "
                       f"| {_cell(res.how)} |")
            continue
        ratio = "-" if name == "nsbox" or ours is None else f"{ours.median / s.median:.2f}"
        status = "" if res.status == "ok" else f" ({_cell(res.status)})"
        out.append(f"| {name}{status} | {fmt_ms(s.median)} | {fmt_ms(s.p90)} | {ratio} "
                   f"| {_cell(res.version)} | {_cell(res.how)} |")
    out += ["", "## Figures against the targets of issues 6 and 11", "",
            "| figure | measured | target | met |", "|---|---|---|:---:|"]
    for fig in results.figures:
        met = {True: "yes", False: "**no**", None: ""}[fig.met]
        shown = fig.shown + (f" ({fig.note})" if fig.note else "")
        out.append(f"| {_cell(fig.name)} | {_cell(shown)} | {_cell(fig.target)} | {met} |")
    bd = results.breakdown
    if bd is not None and bd.steps:
        out += ["", "## Where nsbox's lifecycle time goes", "",
                (f"Medians per step over the {bd.rounds} nsbox lifecycles of the interleaved "
                 "rounds (`Box.start_marks`: the box's init does everything from `plan "
                 "received` to its last mark; `ready` is its message reaching the owner). The "
                 "mount plan's operations (indented) come from "
                 f"{bd.traced_rounds} lifecycles run back to back with `NSBOX_TRACE_OPS=1`. "
                 f"Median total: {fmt_ms(bd.total)} ms. The last column: the same steps for "
                 f"the {bd.suite_boxes} boxes of the box suite's run (`nsbox` fixture, "
                 "marker `sandbox(image='busybox')`, no limits)."), "",
                "| step | median ms | share | in the pytest suite |", "|---|---:|---:|---:|"]
        whole = sum(v for _n, v in bd.steps) or 1.0
        for step, ms in bd.steps:
            suite = bd.suite.get(step)
            in_suite = f"{suite:.3f}" if suite is not None else ""
            out.append(f"| {_cell(step)} | {ms:.3f} | {100 * ms / whole:.0f}% | {in_suite} |")
            if step == "mount plan":
                out += [f"| &nbsp;&nbsp;&nbsp;{_cell(n)} | {v:.3f} | | |" for n, v in bd.detail]
    if results.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in results.notes]
    if results.errors:
        out += ["", "## Errors", ""] + [f"- {_cell(e)}" for e in results.errors]
    return "\n".join(out) + "\n"


# -- chart --------------------------------------------------------------------------------

def chart(results: Results, path: str) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    title = "pytest-nsbox ci/bench: " + dict(results.meta).get("run", "")
    fig.suptitle(title, fontsize=11)

    # 1. lifecycle per runtime
    ax = axes[0][0]
    names, med, p90 = [], [], []
    for name in results.lifecycle:
        s = results.summary(name)
        if s is not None:
            names.append(name)
            med.append(s.median)
            p90.append(s.p90)
    if names:
        colors = ["tab:green" if n == "nsbox" else "tab:gray" for n in names]
        y = range(len(names))
        ax.barh(y, med, color=colors, label="median")
        ax.errorbar(p90, y, fmt="|", color="black", markersize=12, label="p90")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        crun = results.summary("crun")
        if crun is not None:
            ax.axvline(crun.median / 3, color="tab:red", linestyle="--",
                       label=f"target: crun / 3 = {crun.median / 3:.1f} ms")
        for i, v in enumerate(med):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("ms per box lifecycle (lower is better)")
    ax.set_title("Box lifecycle, interleaved rounds", fontsize=10)

    # 2. run() vs exec
    ax = axes[0][1]
    labels = [k for k, v in results.exec_samples.items() if v]
    if labels:
        data = [results.exec_samples[k] for k in labels]
        ax.boxplot(data, vert=False, showfliers=False)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.axvline(2.0, color="tab:red", linestyle="--", label="target: 2 ms")
        ax.legend(fontsize=8)
    ax.set_xlabel("ms per command (lower is better)")
    ax.set_title("A command in a live box", fontsize=10)

    # 3. breakdown
    ax = axes[1][0]
    bd = results.breakdown
    if bd is not None and bd.steps:
        parts = bd.steps
        left = 0.0
        cmap = plt.get_cmap("tab20")
        for i, (name, value) in enumerate(parts):
            ax.barh([0], [value], left=left, color=cmap(i % 20), label=f"{name} {value:.2f}")
            left += value
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.set_xlabel("ms")
    ax.set_title("Where nsbox's lifecycle time goes (medians)", fontsize=10)

    # 4. figures against targets; a score past SCORE_CAP is drawn to the cap (hatched), so
    # one figure far off its target (isolation today: ~30x) does not flatten the others
    ax = axes[1][1]
    scored = [f for f in results.figures if f.score is not None]
    if scored:
        y = range(len(scored))
        colors = ["tab:green" if f.met else "tab:red" for f in scored]
        bars = ax.barh(y, [min(f.score or 0.0, SCORE_CAP) for f in scored], color=colors)
        for bar, f in zip(bars, scored):
            if (f.score or 0.0) > SCORE_CAP:
                bar.set_hatch("//")
        ax.set_yticks(list(y), [textwrap.fill(f.name, 40) for f in scored], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linestyle="--", label="target")
        for i, f in enumerate(scored):
            over = f" (x{f.score:.0f}, cut)" if (f.score or 0.0) > SCORE_CAP else ""
            ax.text(min(f.score or 0.0, SCORE_CAP), i, f" {f.shown}{over}", va="center",
                    fontsize=7)
        if any((f.score or 0.0) > SCORE_CAP for f in scored):
            ax.set_xlim(0, SCORE_CAP * 1.35)  # room for the cut bars' text
        ax.legend(fontsize=8)
    ax.set_xlabel("measured / target (1.0 = target; lower is better)")
    ax.set_title("Targets of issues 6 and 11", fontsize=10)

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
