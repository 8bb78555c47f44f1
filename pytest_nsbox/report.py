"""Text for the report of a failed test: what each box ran, and why it may have died."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .units import format_size

if TYPE_CHECKING:
    from .runtime.box import Box
    from .runtime.result import RunResult

STDERR_TAIL_LINES = 5


def _status(result: RunResult) -> str:
    if result.timed_out:
        return "timed out, killed"
    if result.oom_killed:
        return "killed: out of memory"
    if result.returncode < 0:
        return f"killed by signal {-result.returncode}"
    return f"exit {result.returncode}"


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
    """``box 'x': memory limit 64.0 MiB reached (peak 64.0 MiB), process killed``."""
    try:
        stats = box.stats()
    except Exception:
        stats = None
    killed = any(r.oom_killed for r in box.history) or bool(stats and stats.oom_kills)
    if not killed:
        return None
    limit = stats.memory_limit if stats else box.spec.memory
    peak = stats.memory_peak if stats else None
    limit_text = format_size(limit) if limit else "unlimited"
    peak_text = f" (peak {format_size(peak)})" if peak else ""
    return f"box {box.name!r}: memory limit {limit_text} reached{peak_text}, process killed"
