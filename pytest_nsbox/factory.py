"""The boxes of one test, without pytest: made from the test's spec with overrides, all
closed together.

The pytest side (``plugin.py``) gives a ``BoxFactory`` the test's base spec, its hooks
as plain callables and the pool, and turns the errors raised here into pytest's fail or
skip in one place (``NsboxSession.outcomes``). Raised here: ``SpecError`` (a bad key or
value; after the spec hook, its source says so), ``ImageError`` (a broken Containerfile
or pull), ``HostNotSupported`` (this host cannot run boxes), ``NestedBoxError`` (asked
inside an isolated test's box), and from ``close_all`` one ``TeardownError`` holding every
box's teardown failures.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import NestedBoxError, SpecError
from .lifecycle import Undo

if TYPE_CHECKING:
    from .model.spec import BoxSpec
    from .runtime.box import Box
    from .runtime.engine import Engine

SPEC_HOOK = "pytest_nsbox_box_spec"


def _nothing(*_args: object) -> None:
    return None


class BoxFactory:
    """``nsbox_factory(name=None, **keys) -> Box`` for one test (``group``, also the
    private network's group; ``label`` names kept boxes).

    ``base_spec()`` is the test's validated spec (it raises ``SpecError``); ``engine()``
    the engine boxes run on; ``adjust(spec)`` may change a spec before it is validated
    again (the ``pytest_nsbox_box_spec`` hook); ``started(box)`` and
    ``finished(box, outcome)`` are told of each box; ``pooled()`` may hand over a box
    made ahead of time for the test's first plain box; ``inside_box`` is True inside an
    isolated test, where no box can be made.
    """

    def __init__(self, *, group: str, label: str, base_spec: Callable[[], BoxSpec],
                 engine: Callable[[], Engine],
                 adjust: Callable[[BoxSpec], object] = _nothing,
                 started: Callable[[Box], object] = _nothing,
                 finished: Callable[[Box, str], object] = _nothing,
                 pooled: Callable[[], Box | None] | None = None,
                 inside_box: bool = False) -> None:
        self.group = group
        self.label = label
        self._base_spec = base_spec
        self._engine = engine
        self._adjust = adjust
        self._started = started
        self._finished = finished
        self._pooled = pooled
        self._inside_box = inside_box
        self.boxes: list[Box] = []
        #: Paths of the read-write layers ``close_all(keep=True)`` kept.
        self.kept: list[str] = []
        self._undo = Undo(f"the boxes of {group}")
        self._outcome = "passed"
        self._keep = False

    def __call__(self, name: str | None = None, **keys: Any) -> Box:
        from .model.spec import BoxSpec
        from .runtime.box import Box
        from .runtime.engine import check_host

        if self._inside_box:
            raise NestedBoxError("this test already runs inside a box (isolate); boxes "
                                 "cannot be made from inside one")
        base = self._base_spec()
        if not keys and name is None and not self.boxes and self._pooled is not None:
            pooled = self._pooled()
            if pooled is not None:
                return self._adopt(pooled)
        check_host()
        if name is not None:
            keys["name"] = name
        spec = BoxSpec.from_kwargs({**base.to_kwargs(), **keys}, source="nsbox_factory")
        self._adjust(spec)
        try:
            spec = spec.validate()
        except SpecError as exc:  # the hook made it wrong: say so
            raise SpecError(exc.key, exc.value, exc.problem, exc.example,
                            source=f"after {SPEC_HOOK}: {exc.source}") from None
        label = self.label if not self.boxes else f"{self.label}-{len(self.boxes)}"
        return self._adopt(Box.from_spec(spec, engine=self._engine(), label=label,
                                         group=self.group))

    def _adopt(self, box: Box) -> Box:
        self.boxes.append(box)
        # Undone newest box first: the hook hears of it, then it closes (even if the
        # hook failed; both failures are reported).
        self._undo.callback(self._close, box)
        self._undo.callback(self._tell_finished, box)
        self._started(box)
        return box

    def _tell_finished(self, box: Box) -> None:
        self._finished(box, self._outcome)

    def _close(self, box: Box) -> None:
        try:
            box.close(keep=self._keep)
        finally:
            if box.kept_at:
                self.kept.append(box.kept_at)

    def close_all(self, outcome: str = "passed", keep: bool = False) -> None:
        """Close every box, newest first, telling ``finished`` the test's ``outcome``
        (passed, failed or skipped) first; ``keep`` keeps their layers (``kept``).
        Every box is closed even if some fail: ``TeardownError`` then holds every
        failure (each box's own ``TeardownError`` nested in it). Idempotent."""
        self._outcome, self._keep = outcome, keep
        self._undo.close()
