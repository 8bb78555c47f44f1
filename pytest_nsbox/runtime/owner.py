"""Work of the boxes' owner that a rootless owner hands to its agent (``agent.py``).

- ``netns_runner()``: who runs operations inside network namespaces
  (``network.netns.Runner``): the owner's own threads when it is root, else ``AgentNetns``,
  the agent in the boxes' user namespace, where switch namespaces are anonymous.
- ``as_owner(fn, what)``: ``fn()`` here, or, where a rootless owner may not read or delete
  what a box's non-root users wrote (files of subordinate IDs, which only the boxes' user
  namespace may touch), in the agent: deleting a box's layers
  (``remove_tree_as_owner``), ``Box.diff``, the copy of ``Box.commit``.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

from ..errors import BoxError
from ..kernel import userns
from ..kernel.fs import remove_tree
from ..network import netns
from ..network.errors import NetworkError

T = TypeVar("T")


class AgentNetns:
    """``network.netns.Runner`` of a rootless owner: each operation runs in the agent, in
    a thread that entered the namespace; switch namespaces are anonymous (``named``
    False: a rootless owner may not mount on ``/run/netns``)."""

    named = False

    def run_in(self, ns_fd: int | None, fn: Callable[[], T], what: str,
               timeout: float = netns.OP_TIMEOUT) -> T:
        from . import agent as agent_mod
        from .client import agent

        found = agent()
        if found is None:  # the owner became root? never: rootless() is per process
            return netns.run_in(ns_fd, fn, what, timeout)
        try:
            return found.call(fn, what=what, timeout=timeout,
                              netns=agent_mod.NEW if ns_fd is None else ns_fd)
        except TimeoutError:
            raise NetworkError(f"{what}: did not finish within {timeout:g} s") from None


AGENT_NETNS = AgentNetns()


def netns_runner() -> netns.Runner:
    """The ``Runner`` for this process's boxes (module docstring)."""
    return AGENT_NETNS if userns.rootless() else netns.THREADS


#: Seconds the agent may take for one file-tree call (``as_owner``).
TREE_TIMEOUT = 300.0


def as_owner(fn: Callable[[], T], what: str, *, before_agent: Callable[[], object] | None = None,
             timeout: float = TREE_TIMEOUT) -> T:
    """``fn()`` here; for a rootless owner that may not read or change what a box's
    non-root users made (``PermissionError``: files of subordinate IDs, mode 0700
    directories), ``fn()`` again in the agent, inside the boxes' user namespace, after
    ``before_agent()`` (e.g. emptying a half-made copy). ``fn`` is a module-level function
    of this package (``functools.partial``) whose result pickles.

    Raises what ``fn`` raises, ``BoxError`` when the agent cannot be reached or does not
    answer within ``timeout`` seconds (``what`` names the call).
    """
    try:
        return fn()
    except PermissionError:
        if not userns.rootless():
            raise
    if before_agent is not None:
        before_agent()
    return as_agent(fn, what, timeout)


def as_agent(fn: Callable[[], T], what: str, timeout: float = TREE_TIMEOUT) -> T:
    """``fn()`` in the agent (rootless only: ``BoxError`` without one); its exceptions
    raised here."""
    from .client import agent

    found = agent()
    if found is None:
        raise BoxError(f"{what}: there is no nsbox agent (the owner is root)")
    try:
        return found.call(fn, what=what, timeout=timeout)
    except TimeoutError as exc:
        raise BoxError(str(exc)) from None


def remove_tree_as_owner(path: str) -> None:
    """``kernel.fs.remove_tree(path)`` through ``as_owner``."""
    as_owner(partial(remove_tree, path), f"removing {path}")
