"""What the network needs of a box, and nothing more: the box hands this to ``attach`` and
``reach`` (``runtime/box.py`` implements it), so no network code reads a box's insides."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..model.spec import BoxSpec
    from .netns import Runner


class BoxHandle(Protocol):
    """A running box as its network sees it.

    ``pid`` is the host PID of the box's init; ``alive()`` is True while the box is open
    and that init runs (checked through its pidfd, so a reused PID never passes);
    ``run_dir`` is the engine's run directory (leases and networks are keyed by it) and
    ``owner_lock()`` the lock file its owner holds (``records``); ``group`` names the boxes
    that share one private network. ``on_close(undo)`` pushes ``undo`` on the box's undo
    stack (``lifecycle.Undo``): it runs at the box's close, before the box's init is
    killed; ``set_ip`` records the box's address on its private network. ``netns_runner``
    runs operations inside network namespaces for this box's owner (``netns.Runner``:
    threads of its own as root, the agent in the boxes' user namespace when rootless).
    """

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def hostname(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def ip(self) -> str | None: ...

    @property
    def spec(self) -> BoxSpec: ...

    @property
    def group(self) -> object: ...

    @property
    def run_dir(self) -> str: ...

    @property
    def netns_runner(self) -> Runner: ...

    def owner_lock(self) -> str: ...

    def alive(self) -> bool: ...

    def set_ip(self, ip: str) -> None: ...

    def write_text(self, path: str, text: str) -> None: ...

    def on_close(self, undo: Callable[[], object]) -> None: ...
