"""One lifecycle mechanism: every acquisition pushes its undo; closing runs every undo.

A box, a private network, a network's member, the warm pool and the boxes of one test
each own an ``Undo``. Each step that acquires something (a directory, a cgroup, a pidfd, a
box record, a network attachment, a port forward, a switch namespace, a lease, a box)
pushes the step that releases it right after it succeeded, so a start that fails half-way
undoes exactly what it had done. ``close()`` runs the steps last in, first out
(``contextlib.ExitStack``), runs every step even after some failed, and raises one
``TeardownError`` (an ``ExceptionGroup``, PEP 654) holding every failure, not only the
first. A ``KeyboardInterrupt``/``SystemExit`` in a step is not collected: the remaining
steps still run (``ExitStack``'s rule) and it propagates.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import ParamSpec

from .errors import NsboxError, TeardownError

P = ParamSpec("P")


class Undo:
    """The undo steps of one owner (``what``, e.g. ``"box 'web'"``), run once by ``close()``.

    Thread-safe: a step may be pushed from another thread (a port forward) while the
    owner closes; a step pushed after ``close()`` is run at once (so nothing leaks) and
    ``closed_error`` (default ``NsboxError``) is raised, naming ``what``.
    """

    def __init__(self, what: str, closed_error: type[Exception] = NsboxError) -> None:
        self.what = what
        self._closed_error = closed_error
        self._stack = ExitStack()
        self._errors: list[Exception] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def callback(self, undo: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Push ``undo(*args, **kwargs)``: it runs at ``close()``, before every step pushed
        earlier. Its ``Exception`` is collected into the ``TeardownError``."""
        with self._lock:
            if not self._closed:
                self._stack.callback(self._run, undo, args, kwargs)
                return
        self._run(undo, args, kwargs)
        errors, self._errors = self._errors, []
        error = self._closed_error(f"{self.what} is closed")
        if errors:
            raise error from TeardownError(f"undoing a step pushed after closing {self.what}",
                                           errors)
        raise error

    def _run(self, undo: Callable[..., object], args: tuple[object, ...],
             kwargs: dict[str, object]) -> None:
        try:
            undo(*args, **kwargs)
        except Exception as exc:  # collected: every other step still runs
            self._errors.append(exc)

    def close(self) -> None:
        """Run every step, newest first; ``TeardownError`` with every failure. Idempotent:
        a second call has nothing left to run and returns."""
        with self._lock:
            self._closed = True
            stack, self._stack = self._stack, ExitStack()
        try:
            stack.close()
        except BaseException as exc:  # an interrupt: it wins, the failures ride along
            errors, self._errors = self._errors, []
            for error in errors:
                exc.add_note(f"teardown of {self.what}: also failed: {error}")
            raise
        errors, self._errors = self._errors, []
        if errors:
            raise TeardownError(f"teardown of {self.what} incomplete", errors)
