"""What ``/proc/<pid>`` says about a process: start time, status fields, PID-namespace init,
cgroup membership (proc(5)). Imports only the stdlib."""
from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot): with its pid, it names the
    process uniquely. ``None`` when there is no such process, or only its zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    try:
        if fields[0] in ("Z", "X"):  # a zombie's fds, and locks, are gone
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_own_start: tuple[int, int] = (0, 0)


def own_start_time() -> int:
    """This process's start time (cached per pid: a forked child asks again)."""
    global _own_start
    if _own_start[0] != os.getpid():
        _own_start = (os.getpid(), start_time(os.getpid()) or 0)
    return _own_start[1]


def status_field(pid: int, name: str) -> list[str] | None:
    """The words of field ``name`` in ``/proc/<pid>/status`` (``None``: no such process or
    field)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.split()
    except OSError:
        return None
    return None


def is_namespace_init(pid: int) -> bool:
    """Whether ``pid`` is alive and PID 1 of a PID namespace below this one (a box's init)."""
    nspid = status_field(pid, "NSpid")
    state = status_field(pid, "State")
    return bool(nspid and len(nspid) > 1 and nspid[-1] == "1"
                and state and state[0] not in ("Z", "X"))


def in_cgroup(pid: int, name: str) -> bool:
    """Whether process ``pid`` is in a cgroup called ``name`` (any hierarchy)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return any(line.rstrip("\n").endswith("/" + name) for line in f)
    except OSError:
        return False


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask's count, else the online CPUs,
    as moby ``pkg/sysinfo/numcpu_linux.go`` ``NumCPU`` counts them (the upper bound of a
    box's ``cpus``)."""
    try:
        return len(os.sched_getaffinity(0)) or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


#: ``(init's, commands')`` ``oom_score_adj`` where this process may lower its own: Docker
#: leaves a container's processes at 0 and protects its own daemons below.
OOM_SCORES_PRIVILEGED = (-999, 0)
#: The commands' score where it may not: what Kubernetes gives BestEffort pods
#: (pkg/kubelet/qos/policy.go), the first the OOM killer picks.
OOM_SCORE_UNPRIVILEGED = 1000


def choose_oom_scores() -> tuple[int, int] | None:
    """The OOM scores (``oom_score_adj``, -1000..1000) that make a box's processes, not the
    process that watches them (an init, PID 1), what the OOM killer picks; this process is
    left at the first of ``(init's, commands')``.

    With ``CAP_SYS_RESOURCE`` that is ``OOM_SCORES_PRIVILEGED``. Without it (rootless, or a
    host that withholds it) commands get ``OOM_SCORE_UNPRIVILEGED`` and the init keeps its
    own score, or takes 0 where it is above (a command of an outer box, such as an
    isolation worker, was born at 1000). Lowering needs no privilege down to the lowest
    score set with it (``oom_score_adj_min``, proc(5)): a round trip to the commands'
    score and back checks that here first. ``None`` where even that fails: scores stay as
    they are.
    """
    try:
        set_oom_score(OOM_SCORES_PRIVILEGED[0], strict=True)
        return OOM_SCORES_PRIVILEGED
    except PermissionError:
        pass
    try:
        with open("/proc/self/oom_score_adj", encoding="ascii") as f:
            own = int(f.read())
        if own > OOM_SCORES_PRIVILEGED[1]:
            try:
                set_oom_score(OOM_SCORES_PRIVILEGED[1], strict=True)
                own = OOM_SCORES_PRIVILEGED[1]
            except PermissionError:
                pass
        set_oom_score(OOM_SCORE_UNPRIVILEGED, strict=True)
        set_oom_score(own, strict=True)
        return own, OOM_SCORE_UNPRIVILEGED
    except (OSError, ValueError):
        return None


def set_oom_score(score: int, strict: bool = False) -> None:
    """Write this process's ``oom_score_adj`` (a child inherits it, proc(5)). Best effort
    unless ``strict``, which raises the ``OSError`` (``PermissionError`` below
    ``oom_score_adj_min`` without ``CAP_SYS_RESOURCE``)."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(score).encode())
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise
