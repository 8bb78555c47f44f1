"""Values a box hands back: command results and filesystem changes."""
from __future__ import annotations

from dataclasses import dataclass


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RunResult:
    """The outcome of one command in a box, like ``subprocess.CompletedProcess``.

    ``returncode`` is the exit status, or ``-N`` when signal N ended the command.
    ``duration`` is in seconds. ``oom_killed`` is Docker's ``OOMKilled`` (moby
    ``daemon/monitor.go``): the kernel killed some process of the box for memory between
    the command's start and its exit, the command itself or any other (a child, a
    background process); its ``returncode`` says whether the command itself died.
    ``timed_out``: the command outlived its ``timeout`` and was killed.
    ``args`` is the command as given (a list, or the shell string). ``stdout_bytes`` and
    ``stderr_bytes`` are the whole output; ``stdout``/``stderr`` decode it as UTF-8
    (undecodable bytes become U+FFFD). ``ok``: status 0 and not timed out.
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
    """One entry of ``Box.diff()``, as ``docker diff`` prints it: ``C /etc``.

    ``path`` is absolute in the box; ``kind`` is ``"A"`` (added), ``"C"`` (changed, or a
    directory with a change below it) or ``"D"`` (deleted: a whiteout in the read-write
    layer, OCI image spec "Representing Changes"). Ordered by ``path``."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"
