"""The warm pool (ini ``nsbox_pool = N``): boxes for the next tests, made while this one runs.

Only the ``nsbox`` fixture's first box is pooled, and only for a spec that is known before
the test starts (marker + ini defaults + ``pytest_nsbox_box_spec``, all run in the main
thread at prefetch time). A background thread starts the boxes; a test whose box is not
ready yet waits for it (bounded), and one whose prefetch failed gets its box made the
normal way, so an error is raised in that test's own setup. At session end ``close()``
unwinds the pool's undo stack (``lifecycle.Undo``): every box no test took is closed, and
``TeardownError`` holds every box whose teardown failed.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from .errors import BoxError
from .lifecycle import Undo

if TYPE_CHECKING:
    from .runtime.box import Box
    from .runtime.engine import Engine
    from .model.spec import BoxSpec

TAKE_TIMEOUT = 60.0


class Pool:
    def __init__(self, size: int, engine: Engine) -> None:
        self.size = size
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsbox-pool")
        self._pending: dict[str, tuple[BoxSpec, Future[Box]]] = {}
        self._lock = threading.Lock()
        self._undo = Undo("the warm pool")
        self._undo.callback(self._executor.shutdown, wait=True)  # last: after every box
        self.hits = 0
        self.misses = 0

    def wanted(self, nodeid: str) -> bool:
        with self._lock:
            return nodeid not in self._pending and len(self._pending) < self.size

    def prefetch(self, nodeid: str, spec: BoxSpec, label: str) -> None:
        """Start a box for test ``nodeid`` in the background."""
        from .runtime.box import Box

        with self._lock:
            if nodeid in self._pending or len(self._pending) >= self.size:
                return
            future = self._executor.submit(Box.from_spec, spec, engine=self.engine, label=label,
                                           group=nodeid)
            self._pending[nodeid] = (spec, future)
            self._undo.callback(self._discard, nodeid, future)

    def take(self, nodeid: str) -> Box | None:
        """The box prepared for this test (its spec already went through the hook)."""
        with self._lock:
            entry = self._pending.pop(nodeid, None)
        if entry is None:
            self.misses += 1
            return None
        try:
            box = entry[1].result(timeout=TAKE_TIMEOUT)
        except Exception:  # made again in the test itself, where the error belongs
            self.misses += 1
            return None
        self.hits += 1
        return box

    def _discard(self, nodeid: str, future: Future[Box]) -> None:
        """Close the box made for ``nodeid`` unless its test took it."""
        with self._lock:
            entry = self._pending.get(nodeid)
            if entry is None or entry[1] is not future:
                return  # taken: its test closes it
            del self._pending[nodeid]
        try:
            box = future.result(timeout=TAKE_TIMEOUT)
        except Exception as exc:
            if future.done():
                return  # it never started: nothing to undo (its test made its own box)
            raise BoxError(f"the warm pool's box for {nodeid} did not start within "
                           f"{TAKE_TIMEOUT:g} s") from exc
        box.close()

    def close(self) -> None:
        """Tear down every box no test took (at session end); ``TeardownError`` with
        every failure."""
        self._undo.close()
