"""Text for the report of a failed test: what each box ran, and why it may have died."""
from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from .units import format_size

if TYPE_CHECKING:
    from .runtime.box import Box
    from .model.results import RunResult

STDERR_TAIL_LINES = 5


def _status(result: RunResult) -> str:
    """``exit 0``, ``killed: out of memory``, ``exit 0; out of memory: ...``.

    ``oom_killed`` means the kernel killed some process of the box for memory while the
    command ran (Docker's ``OOMKilled``), not necessarily the command: only a command that
    died of SIGKILL is reported as the one killed.
    """
    if result.oom_killed and result.returncode == -signal.SIGKILL and not result.timed_out:
        return "killed: out of memory"
    if result.timed_out:
        text = "timed out, killed"
    elif result.returncode < 0:
        text = f"killed by signal {-result.returncode}"
    else:
        text = f"exit {result.returncode}"
    if result.oom_killed:
        text += "; out of memory: the kernel killed a process of the box"
    return text


def box_section(box: Box) -> str:
    lines = [f"box {box.name!r} ({box.spec.describe()}, id {box.id}):"]
    if not box.history:
        lines.append("  (no commands run)")
    for result in box.history:
        args = result.args if isinstance(result.args, str) else " ".join(result.args)
        lines.append(f"  $ {args}  -> {_status(result)} in {result.duration:.3f} s")
        tail = result.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:]
        lines += [f"    stderr: {line}" for line in tail]
    oom = oom_line(box)
    if oom:
        lines.append(oom)
    return "\n".join(lines)


def oom_line(box: Box) -> str | None:
    """``box 'x': memory limit 64.0 MiB reached (peak 64.0 MiB), 2 processes killed``.

    Said when any command's result has ``oom_killed`` or the box cgroup counted an OOM
    kill (of any of its processes, child cgroups included); the count is the cgroup's
    (``process killed`` where its figures cannot be read).
    """
    try:
        stats = box.stats()
    except Exception:
        stats = None
    killed = any(r.oom_killed for r in box.history) or bool(stats and stats.oom_kills)
    if not killed:
        return None
    limit = stats.memory_limit if stats else box.spec.memory
    peak = stats.memory_peak if stats else None
    peak_text = f" (peak {format_size(peak)})" if peak else ""
    kills = stats.oom_kills if stats else 0
    what = f"{kills} process{'es' if kills > 1 else ''} killed" if kills else "process killed"
    if not limit:  # the kernel killed for the host's memory or a parent cgroup's limit
        return (f"box {box.name!r}: out of memory with no memory limit of its own (the host's "
                f"or a parent cgroup's ran out){peak_text}, {what}")
    return f"box {box.name!r}: memory limit {format_size(limit)} reached{peak_text}, {what}"
