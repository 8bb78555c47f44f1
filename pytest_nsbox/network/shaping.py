"""Traffic shaping of a box's link: the spec's ``rate``, ``latency``, ``jitter``, ``loss``.

Where it applies (a box on a private network has one link, its veth pair):

- ``rate`` limits both directions: a token bucket (``tbf``) on the box's ``eth0`` (what the
  box sends) and one on the switch-side end of its veth (what the box receives).
- ``latency``, ``jitter`` and ``loss`` apply to what the box sends: ``netem`` at the root of
  its ``eth0``, with the ``tbf`` as netem's child when ``rate`` is set too (as netem's own
  documentation stacks them). A round trip between two boxes with ``latency='50ms'`` each
  takes 100 ms more; with only one of them shaped, 50 ms more.

The plans are plain data (``Qdisc``), built without a kernel; ``apply`` sends them over an
open ``IPRoute`` and turns a missing qdisc kind (``sch_netem`` is often not built) into an
error naming the kernel module.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..units import duration_units, format_duration, format_number, format_rate, percent_u32
from .errors import NetworkError
from .netlink import failure, netlink_error

if TYPE_CHECKING:
    from ..model.spec import BoxSpec

#: An Ethernet frame of the veths' default MTU: a token bucket smaller than one never sends.
FRAME = 1514
#: Bucket size: this much of the rate's worth of bytes, at least two frames (20 ms, exact).
BURST_SECONDS = Fraction(1, 50)
#: Queue before the bucket drops: this much of the rate's worth of bytes, plus the bucket.
QUEUE_SECONDS = Fraction(1, 5)
#: netem's times are in microseconds (tc's ``get_time`` units; pyroute2 then makes ticks).
USEC_PER_SECOND = 10**6
#: netem's probabilities are fractions of this (iproute2 tc/q_netem.c ``set_percent``).
U32_MAX = 2**32 - 1
#: tbf keeps bytes/s in a u32; netem keeps delays in a u32 of scheduler ticks.
MAX_TBF_BYTES = 2**32 - 1
MIN_RATE = 1000
MAX_DELAY = 200.0
NETEM_LIMIT = 1000

# tc handles are major:minor in one u32.
ROOT = 0xFFFFFFFF           # TC_H_ROOT: "root" as a parent
ROOT_HANDLE = 0x10000       # 1:0, the root qdisc (netem, or tbf alone)
TBF_UNDER_NETEM = 0x100000  # 10:0, tbf as the child of netem's only class
NETEM_CLASS = 0x10001       # 1:1

#: The marker keys each qdisc serves, for error messages.
KEYS = {"netem": "latency, jitter and loss", "tbf": "rate"}


@dataclass(frozen=True)
class Qdisc:
    """One ``tc qdisc add dev X parent P handle H KIND params`` request."""

    kind: str
    handle: int
    parent: int = ROOT
    params: dict[str, Any] = field(default_factory=dict)
    keys: str = ""
    """The spec's keys it serves, as given: ``latency='50ms'``, for errors."""


def tbf_params(rate_bits: int) -> dict[str, int]:
    """pyroute2's tbf arguments (bytes/s, bytes, bytes) for a rate in bit/s."""
    if rate_bits < MIN_RATE:
        raise NetworkError(f"rate {rate_bits}bit is below what tbf can shape "
                           f"(at least {MIN_RATE // 1000}kbit)")
    rate = rate_bits // 8
    if rate > MAX_TBF_BYTES:
        raise NetworkError(f"rate {rate_bits}bit is above what tbf can shape "
                           f"({MAX_TBF_BYTES * 8 // 10**9} gbit); leave rate unset")
    burst = max(int(rate * BURST_SECONDS), 2 * FRAME)  # int() of a Fraction: exact
    limit = burst + max(int(rate * QUEUE_SECONDS), 2 * FRAME)
    return {"rate": rate, "burst": burst, "limit": limit}


def netem_params(latency: float | None, jitter: float | None,
                 loss: float | None) -> dict[str, Any]:
    """pyroute2's netem arguments: delay and jitter in microseconds, loss in percent.

    Exact, with tc's rules: times are truncated to whole microseconds (iproute2
    ``get_time``), so ``latency='1.005s'`` is 1005000 us; the loss probability is
    ``rint(loss / 100 * UINT32_MAX)`` (``set_percent``), so ``'1%'`` is 42949673. pyroute2
    turns a percentage into that u32 by truncating ``UINT32_MAX * pct / 100``, so the
    percentage given to it is the exact ``Fraction`` that truncates to tc's value.
    """
    for key, value in (("latency", latency), ("jitter", jitter)):
        if value is not None and value > MAX_DELAY:
            raise NetworkError(f"{key} {format_number(value)} s is more than netem can delay "
                               f"({MAX_DELAY:g} s)")
    params: dict[str, Any] = {"delay": duration_units(latency or 0.0, USEC_PER_SECOND),
                              "limit": NETEM_LIMIT}
    if jitter:
        params["jitter"] = duration_units(jitter, USEC_PER_SECOND)
    if loss:
        params["loss"] = Fraction(percent_u32(loss) * 100, U32_MAX)
    return params


def _netem_keys(spec: BoxSpec) -> str:
    keys = []
    if spec.latency is not None:
        keys.append(f"latency={format_duration(spec.latency)!r}")
    if spec.jitter is not None:
        keys.append(f"jitter={format_duration(spec.jitter)!r}")
    if spec.loss is not None:
        keys.append(f"loss='{format_number(spec.loss)}%'")
    return ", ".join(keys)


def box_side(spec: BoxSpec) -> list[Qdisc]:
    """The qdiscs of the box's ``eth0``: what the box sends."""
    plan: list[Qdisc] = []
    netem_keys = _netem_keys(spec)
    if netem_keys:
        plan.append(Qdisc("netem", ROOT_HANDLE, ROOT,
                          netem_params(spec.latency, spec.jitter, spec.loss), netem_keys))
    if spec.rate is not None:
        parent, handle = (NETEM_CLASS, TBF_UNDER_NETEM) if plan else (ROOT, ROOT_HANDLE)
        plan.append(Qdisc("tbf", handle, parent, tbf_params(spec.rate), _rate_key(spec.rate)))
    return plan


def switch_side(spec: BoxSpec) -> list[Qdisc]:
    """The qdiscs of the switch-side veth end: what the box receives."""
    if spec.rate is None:
        return []
    return [Qdisc("tbf", ROOT_HANDLE, ROOT, tbf_params(spec.rate), _rate_key(spec.rate))]


def _rate_key(rate: int) -> str:
    return f"rate={format_rate(rate)!r}"


def describe(q: Qdisc) -> str:
    """``tc``'s words for a request, for error messages."""
    where = "root" if q.parent == ROOT else f"parent {q.parent >> 16:x}:{q.parent & 0xFFFF:x}"
    args = " ".join(f"{k} {float(v):g}" if isinstance(v, Fraction) else f"{k} {v}"
                    for k, v in q.params.items())
    return f"qdisc {q.kind} {where} handle {q.handle >> 16:x}: {args}"


def missing_kind(exc: Exception, q: Qdisc) -> bool:
    """Whether a netlink error to adding ``q`` says its kind is not in the kernel.

    With extended acks the kernel says "Specified qdisc kind is unknown"; without, ENOENT on
    a root qdisc (whose device exists) can only mean that.
    """
    if getattr(exc, "code", None) != errno.ENOENT:
        return False
    return "kind is unknown" in str(exc) or q.parent == ROOT


def missing_message(q: Qdisc, where: str) -> str:
    keys = q.keys or KEYS.get(q.kind, q.kind)
    verb = "need" if "," in keys or " and " in keys else "needs"
    return (f"{where}: {keys} {verb} the kernel's {q.kind} qdisc, which this kernel lacks: "
            f"kernel module sch_{q.kind} is missing (CONFIG_NET_SCH_{q.kind.upper()}); load "
            f"it with `modprobe sch_{q.kind}`, or leave {KEYS.get(q.kind, q.kind)} unset")


def apply(ipr: Any, index: int, plan: list[Qdisc], where: str) -> None:
    """Add ``plan``'s qdiscs to the interface ``index`` through the ``IPRoute`` ``ipr``."""
    for q in plan:
        kwargs: dict[str, Any] = dict(q.params)
        if q.parent != ROOT:
            kwargs["parent"] = q.parent
        try:
            ipr.tc("add", q.kind, index, q.handle, **kwargs)
        except netlink_error() as exc:
            if missing_kind(exc, q):
                raise NetworkError(missing_message(q, where)) from None
            raise failure(f"{where}: adding {describe(q)}", exc) from None
