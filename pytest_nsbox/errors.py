"""One error hierarchy for everything pytest-nsbox raises on purpose.

Callers catch ``NsboxError``; the plugin maps ``HostNotSupported`` to a skip and
``SpecError`` to a one-line usage error, so neither ever reaches users as a traceback.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model.results import RunResult


class NsboxError(Exception):
    """Base of every error pytest-nsbox raises deliberately."""


class SpecError(NsboxError, ValueError):
    """A marker, factory or ``Box`` key or value is wrong.

    ``str()`` is the whole user-facing line, e.g.
    ``sandbox(memory='lots'): not a size; use e.g. '64M'``.
    """

    def __init__(self, key: str, value: object, problem: str, example: str | None = None,
                 source: str = "sandbox") -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.example = example
        self.source = source
        hint = f"; use e.g. {example}" if example else ""
        super().__init__(f"{source}({key}={_short_repr(value)}): {problem}{hint}")


def _short_repr(value: object, limit: int = 400) -> str:
    """repr() that stays one readable line, whatever a fuzzer or a typo passes in."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 5] + "...)"


#: The command every "this host cannot run boxes" line points to (CONTRACT.md).
DOCTOR = "python -m pytest_nsbox doctor"


class HostNotSupported(NsboxError):
    """This host cannot run boxes; the message is one fix-it line, which ends by pointing
    to ``python -m pytest_nsbox doctor`` (added here unless the line names it already)."""

    def __init__(self, message: str) -> None:
        if DOCTOR not in message:
            message = f"{message}; `{DOCTOR}` shows what this host lacks"
        super().__init__(message)


class BoxError(NsboxError):
    """A box could not be created, or failed while it ran."""


class BoxClosed(BoxError):
    """The box was used after ``close()`` or after its init died."""


class NestedBoxError(BoxError):
    """A box was asked for where none can be made: inside an isolated test's own box."""


class TeardownError(BoxError, ExceptionGroup):
    """Undoing what a box, a network, a pool or a test's boxes acquired failed in one or
    more steps (``lifecycle.Undo.close``). An ``ExceptionGroup``: ``exceptions`` holds every
    failure (nested groups for a part with its own teardown), and the steps after a
    failing one still ran, so what was not named here was released. ``str()`` is one line
    naming what was torn down and each failure."""

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> TeardownError:
        return super().__new__(cls, message, exceptions)

    def __str__(self) -> str:
        return f"{self.message}: " + "; ".join(str(e) for e in self.exceptions)

    def derive(self, excs: Sequence[Exception]) -> TeardownError:  # type: ignore[override]
        """``split``/``subgroup`` (and ``except*``) keep the class (PEP 654)."""
        return TeardownError(self.message, excs)


class CgroupError(NsboxError):
    """A cgroup could not be created, limited, read or removed."""


class LimitUnavailable(CgroupError):
    """A box asks for a limit this host cannot apply (a missing controller; rootless
    without a delegated cgroup). ``policy`` is ini ``nsbox_unavailable_limits``
    (``fail`` or ``skip``): what the plugin makes of it for the test."""

    #: The values of ini ``nsbox_unavailable_limits`` (CONTRACT.md), the default first.
    POLICIES = ("fail", "skip", "warn")

    def __init__(self, message: str, policy: str = "fail") -> None:
        super().__init__(message)
        self.policy = policy


class LimitsNotApplied(UserWarning):
    """A box runs without a limit it asked for (``nsbox_unavailable_limits = warn``)."""


class ImageError(NsboxError):
    """An image reference is unknown, or an image could not be built or loaded."""


class CommandFailed(NsboxError):
    """``run(..., check=True)`` got a non-zero exit; ``result`` holds the whole ``RunResult``."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        tail = result.stderr.strip().splitlines()[-3:]
        detail = (": " + " | ".join(tail)) if tail else ""
        if result.timed_out:
            what = "timed out"
        elif result.oom_killed and result.returncode == -9:  # SIGKILL
            what = "was killed for memory (OOM)"
        else:
            what = f"exited with status {result.returncode}"
            if result.oom_killed:
                what += " after the kernel killed a process of its box for memory (OOM)"
        super().__init__(f"command {result.args!r} {what}{detail}")
