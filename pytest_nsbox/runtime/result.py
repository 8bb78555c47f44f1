"""Values a box hands back: command results and filesystem changes."""
from __future__ import annotations

from dataclasses import dataclass


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RunResult:
    """The outcome of one command in a box, like ``subprocess.CompletedProcess``.

    ``returncode`` is the exit status, or ``-N`` when signal N ended the command.
    """

    args: list[str] | str
    returncode: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    duration: float
    oom_killed: bool = False
    timed_out: bool = False

    @property
    def stdout(self) -> str:
        return _text(self.stdout_bytes)

    @property
    def stderr(self) -> str:
        return _text(self.stderr_bytes)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True, order=True)
class Change:
    """One entry of ``Box.diff()``, as ``docker diff`` prints it: ``C /etc``."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"
