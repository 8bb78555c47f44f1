"""The validated box spec. Data flows one way: marker kwargs -> ``BoxSpec`` -> box.

Every key a user can give (the ``sandbox`` marker, ``nsbox_factory``, ``Box(...)``, ini
defaults, a ``pytest_nsbox_box_spec`` hook) goes through the same small per-key validators
below before anything is created (runc's ``validate`` pattern). A bad key or value becomes one
``SpecError`` line naming the source, the key, the value and a good example, e.g.
``sandbox(memory='lots'): not a size; use e.g. '64M'``, never a traceback from the runtime.

Validators are idempotent, so ``BoxSpec.validate()`` can re-check a spec a hook has changed
(``spec.memory = "128M"``) and return it normalized. No pytest import here.
"""
# Validators raise ValueError for wrong types too: their caller turns it into a SpecError.
# ruff: noqa: TRY004
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SpecError
from . import users
from ..units import (
    format_duration,
    format_number,
    format_rate,
    format_size,
    nano_cpus,
    parse_cpus,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULTS_KEY",
    "EXAMPLES",
    "KEYS",
    "NETWORKS",
    "SHAPING_KEYS",
    "MIN_MEMORY",
    "MIN_NANO_CPUS",
    "Bind",
    "BoxSpec",
    "check_cpus_available",
    "merge_marker_kwargs",
]

#: Every key the marker, ``nsbox_factory`` and ``Box`` take, in the order reports show them.
KEYS: tuple[str, ...] = (
    "image", "memory", "cpus", "pids", "network", "hostname", "env", "user", "binds",
    "timeout", "rate", "latency", "jitter", "loss", "privileged", "cap_add", "cap_drop",
    "seccomp", "isolate", "name",
)

#: A good value for each key, as Python source; ends every ``SpecError`` ("use e.g. ...").
EXAMPLES: dict[str, str] = {
    "image": "'busybox'",
    "memory": "'64M'",
    "cpus": "0.5",
    "pids": "64",
    "network": "'none', 'private' or 'host'",
    "hostname": "'box'",
    "env": "{'A': '1'}",
    "user": users.EXAMPLE,
    "binds": "{'/host/dir': '/data:ro'}",
    "timeout": "30",
    "rate": "'1mbit'",
    "latency": "'50ms'",
    "jitter": "'10ms'",
    "loss": "'1%'",
    "privileged": "True",
    "cap_add": "['NET_ADMIN']",
    "cap_drop": "['NET_RAW']",
    "seccomp": "True",
    "isolate": "True",
    "name": "'db'",
}

#: The ``network`` modes: own loopback-only namespace, one network per test, the host's.
NETWORKS: tuple[str, ...] = ("none", "private", "host")

#: Keys that shape the box's traffic with tc netem; they need a network of the box's own.
SHAPING_KEYS: tuple[str, ...] = ("rate", "latency", "jitter", "loss")

#: How an ini default's key is shown in errors; ``{key}`` is the spec key.
DEFAULTS_KEY = "nsbox_{key}"

#: Linux capabilities by number (``linux/capability.h``), without the ``CAP_`` prefix.
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
))}

# RFC 1123 labels (letters, digits, inner '-', 63 at most) joined by dots; HOST_NAME_MAX is 64.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOSTNAME_MAX = 64
# pids.max is bounded by PID_MAX_LIMIT (4 * 1024 * 1024 on 64-bit kernels).
_PIDS_MAX = 4 * 1024 * 1024

#: The least ``memory`` a box may have: moby ``daemon/daemon_unix.go`` ``linuxMinMemory``
#: (6 MiB, "to account for overhead during startup"); below it a box dies while it starts.
MIN_MEMORY = 6 * 1024 * 1024

#: The least ``cpus``, in nano-CPUs: 0.01, Docker's ("Range of CPUs is from 0.01 to ...");
#: its quota, 1000 us per 100000 us period, is the least the kernel's CFS takes (1 ms,
#: Documentation/scheduler/sched-bwc.rst).
MIN_NANO_CPUS = 10_000_000
_CPU_RANGE = "the range of CPUs is from 0.01 to {n} (as Docker's --cpus)"


@dataclass(frozen=True)
class Bind:
    """One host path mounted into the box: from ``binds={"/host/dir": "/data:ro"}``."""

    source: str
    """Absolute path on the host; it must exist when the spec is validated."""
    target: str
    """Absolute path inside the box, normalized, never ``/`` and without ``..``."""
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.readonly else "")


# -- per-key validators: each takes the raw value and returns the normalized one, or raises
# -- ValueError with a short problem; from_kwargs() wraps that into a SpecError. -------------

def _image(v: object) -> str:
    if not isinstance(v, str) or not v or "\0" in v or any(c.isspace() for c in v):
        raise ValueError("not an image reference (a non-empty string without spaces)")
    return v


def _memory(v: object) -> int | None:
    if v is None:
        return None
    size = parse_size(v)
    if size == 0:
        raise ValueError("must be more than 0")
    if size < MIN_MEMORY:
        raise ValueError(f"less than 6M ({MIN_MEMORY} bytes), the least a box can start in "
                         f"(Docker: \"Minimum memory limit allowed is 6MB\")")
    return size


def _cpus(v: object) -> float | None:
    if v is None:
        return None
    cpus = parse_cpus(v)
    if nano_cpus(cpus) < MIN_NANO_CPUS:
        raise ValueError(f"less than 0.01; {_CPU_RANGE.format(n='the number of host CPUs')}")
    return cpus


def check_cpus_available(cpus: float | None, available: int, source: str) -> None:
    """The upper bound of ``cpus``, checked where the box starts (a spec may be validated
    on another machine): at most the ``available`` CPUs of this host, as moby
    ``daemon/daemon_unix.go`` ``verifyPlatformContainerResources`` refuses ``NanoCPUs``
    above ``sysinfo.NumCPU() * 1e9``. Raises ``SpecError`` with Docker's range sentence."""
    if cpus is not None and nano_cpus(cpus) > available * 10**9:
        raise SpecError("cpus", cpus, f"more than this host's {available} CPUs; "
                        + _CPU_RANGE.format(n=f"{available}.00, as there are only {available} "
                                              f"CPUs available"), EXAMPLES["cpus"], source)


def _pids(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("not a whole number of processes")
    if v < 1:
        raise ValueError("must be at least 1")
    if v > _PIDS_MAX:
        raise ValueError(f"must be at most {_PIDS_MAX}")
    return v


def _network(v: object) -> str:
    mode = v.strip().lower() if isinstance(v, str) else ""
    if mode not in NETWORKS:
        raise ValueError("not a network mode")
    return mode


def _hostname(v: object) -> str | None:
    if v is None:
        return None
    if (not isinstance(v, str) or len(v) > _HOSTNAME_MAX
            or not all(_LABEL.fullmatch(label) for label in v.split("."))):
        raise ValueError("not a hostname (letters, digits and inner '-' in dot-separated labels,"
                         f" {_HOSTNAME_MAX} characters at most)")
    return v


def _name(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise ValueError("not a box name (a letter or digit, then letters, digits, '_', '.' or"
                         " '-', 63 characters at most)")
    return v


def _env(v: object) -> dict[str, str]:
    """Names without '=' or NUL; values str, int or float (made str). bool and None are
    refused: ``True`` could mean "1", "true" or "True", and None could mean unset."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError("not a mapping of variable names to values")
    env: dict[str, str] = {}
    for name, value in v.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not a variable name (non-empty, no '=' or NUL)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"the value of {name} must be a str, int or float,"
                             f" not {type(value).__name__}")
        text = str(value)
        if "\0" in text:
            raise ValueError(f"the value of {name} contains NUL")
        env[name] = text
    return env


def _abs_path(path: str) -> str | None:
    """``path`` with ``//`` and ``.`` collapsed; ``None`` when it has a ``..`` component."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/" + "/".join(parts)


def _make_bind(source: object, target: object, readonly: object) -> Bind:
    if not isinstance(source, str) or not isinstance(target, str):
        raise ValueError("bind source and target must be strings")
    if not isinstance(readonly, bool):
        raise ValueError(f"bind {source!r}: readonly must be True or False")
    if "\0" in source or not source.startswith("/"):
        raise ValueError(f"bind source {source!r} is not an absolute path")
    clean_source = "/" + os.path.normpath(source).lstrip("/")  # normpath keeps a leading //
    if not os.path.exists(clean_source):
        raise ValueError(f"bind source {source!r} does not exist on the host")
    if "\0" in target or not target.startswith("/"):
        raise ValueError(f"bind target {target!r} is not an absolute path")
    clean_target = _abs_path(target)
    if clean_target is None:
        raise ValueError(f"bind target {target!r} must not contain '..'")
    if clean_target == "/":
        raise ValueError(f"bind target {target!r} must not be the box's root")
    return Bind(source=clean_source, target=clean_target, readonly=readonly)


def _bind_target(source: object, spec: object) -> Bind:
    """``"/data:ro"`` -> target ``/data``, read-only; ``:rw`` or no option is read-write."""
    if not isinstance(spec, str):
        raise ValueError(f"bind target of {source!r} must be a string like '/data:ro'")
    target, sep, option = spec.rpartition(":")
    if not sep:
        target, option = spec, "rw"
    if option not in ("ro", "rw"):
        raise ValueError(f"bind option {option!r} of {source!r} is not 'ro' or 'rw'")
    return _make_bind(source, target, option == "ro")


def _bind_string(text: str) -> Bind:
    """``"/src:/dst[:ro|rw]"``, as ``docker run -v`` spells one bind."""
    source, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"bind {text!r} is not 'source:target[:ro]'")
    return _bind_target(source, rest)


def _binds(v: object) -> list[Bind]:
    """``{source: "target[:ro|rw]"}``, or a list of ``Bind`` or ``"source:target[:ro]"``."""
    if v is None:
        return []
    binds: list[Bind] = []
    if isinstance(v, Mapping):
        binds = [_bind_target(source, spec) for source, spec in v.items()]
    elif isinstance(v, str):
        binds = [_bind_string(v)]
    elif isinstance(v, Iterable) and not isinstance(v, (bytes, bytearray)):
        for item in v:
            if isinstance(item, Bind):
                binds.append(_make_bind(item.source, item.target, item.readonly))
            elif isinstance(item, str):
                binds.append(_bind_string(item))
            else:
                raise ValueError(f"{item!r} is not a bind")
    else:
        raise ValueError("not a mapping of host paths to box paths")
    seen: set[str] = set()
    for bind in binds:
        if bind.target in seen:
            raise ValueError(f"two binds onto {bind.target!r}")
        seen.add(bind.target)
    return binds


def _timeout(v: object) -> float | None:
    if v is None:
        return None
    seconds = parse_duration(v)
    if seconds == 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


def _rate(v: object) -> int | None:
    return None if v is None else parse_rate(v)


def _duration(v: object) -> float | None:
    return None if v is None else parse_duration(v)


def _loss(v: object) -> float | None:
    return None if v is None else parse_percent(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be True or False")
    return v


def _capability(v: object) -> str:
    """``"net_admin"``, ``"CAP_NET_ADMIN"`` -> ``"NET_ADMIN"``; ``"ALL"`` is every one."""
    if not isinstance(v, str):
        raise ValueError(f"capability names are strings, not {type(v).__name__}")
    name = v.strip().upper().removeprefix("CAP_")
    if name == "ALL" or name in CAPABILITIES:
        return name
    close = difflib.get_close_matches(name, CAPABILITIES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown capability {v!r}{hint}")


def _capabilities(v: object) -> list[str]:
    """A list of capability names; one name alone is a list of one. Duplicates dropped."""
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if isinstance(v, (Mapping, bytes, bytearray)) or not isinstance(v, Iterable):
        raise ValueError("not a list of capability names")
    names: list[str] = []
    for item in v:
        name = _capability(item)
        if name not in names:
            names.append(name)
    return ["ALL"] if "ALL" in names else names


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "image": _image,
    "memory": _memory,
    "cpus": _cpus,
    "pids": _pids,
    "network": _network,
    "hostname": _hostname,
    "env": _env,
    "user": users.check,
    "binds": _binds,
    "timeout": _timeout,
    "rate": _rate,
    "latency": _duration,
    "jitter": _duration,
    "loss": _loss,
    "privileged": _bool,
    "cap_add": _capabilities,
    "cap_drop": _capabilities,
    "seccomp": _bool,
    "isolate": _bool,
    "name": _name,
}
assert tuple(_VALIDATORS) == KEYS == tuple(EXAMPLES)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _from_ini(key: str, v: object) -> object:
    """Ini values are text (or a linelist): turn them into the marker's Python form.

    Booleans ``true/false/yes/no/on/off/1/0``; ``cap_add``/``cap_drop`` separated by spaces
    or commas; ``env`` as ``NAME=value`` lines; ``binds`` as ``/src:/dst[:ro]`` lines. Sizes,
    rates, durations and numbers are already accepted as strings by their validators.
    """
    if key in ("privileged", "seccomp", "isolate") and isinstance(v, str):
        word = v.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else v
    if key in ("cap_add", "cap_drop") and isinstance(v, str):
        return v.replace(",", " ").split()
    if key == "env" and isinstance(v, (str, list)):
        lines = v.splitlines() if isinstance(v, str) else v
        env: dict[object, object] = {}
        for line in lines:
            if isinstance(line, str) and not line.strip():
                continue
            if not isinstance(line, str) or "=" not in line:
                return v  # let the validator say what is wrong with it
            name, _, value = line.strip().partition("=")
            env[name] = value
        return env
    if key == "binds" and isinstance(v, str):
        return [line.strip() for line in v.splitlines() if line.strip()]
    return v


def _unknown_key(key: str, value: object, source: str, shown: str | None = None) -> SpecError:
    """Suggest the closest key (``memroy`` -> ``memory='64M'``), else list them all."""
    shown = key if shown is None else shown
    close = difflib.get_close_matches(str(key).lower(), KEYS, n=1)
    if close:
        return SpecError(shown, value, "unknown key", f"{close[0]}={EXAMPLES[close[0]]}", source)
    return SpecError(shown, value, f"unknown key (known keys: {', '.join(KEYS)})", None, source)


def merge_marker_kwargs(kwarg_dicts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge marker kwargs given closest first (function, class, module): first one wins.

    Key by key, not deeper: a closer ``env`` or ``binds`` replaces the farther one whole
    (no merging of variables or mounts), so what a test states is all it gets. An explicit
    ``None`` is a value too: ``memory=None`` on a function lifts a module's memory limit.
    """
    merged: dict[str, Any] = {}
    for kwargs in kwarg_dicts:
        for key, value in kwargs.items():
            merged.setdefault(key, value)
    return merged


@dataclass(slots=True)
class BoxSpec:
    """What one box should be: the marker's keys, validated and normalized.

    Build it with ``from_kwargs`` (which validates); after changing attributes (a
    ``pytest_nsbox_box_spec`` hook), call ``validate()`` to get it checked and normalized
    again. Units: ``memory`` bytes, ``cpus`` cores, ``timeout``/``latency``/``jitter``
    seconds, ``rate`` bit/s, ``loss`` percent; ``None`` is "no limit" / "not set".
    ``user`` is who the box's commands run as (``run(user=)`` overrides it; ``None``: the
    image's ``USER``, else root), resolved in the box by runc's rules (``model/users.py``).
    """

    image: str = "host"
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    network: str = "none"
    hostname: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    binds: list[Bind] = field(default_factory=list)
    timeout: float | None = None
    rate: int | None = None
    latency: float | None = None
    jitter: float | None = None
    loss: float | None = None
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: bool = True
    isolate: bool = False
    name: str | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, source: str = "sandbox",
                    defaults: Mapping[str, Any] | None = None,
                    defaults_source: str = "ini") -> BoxSpec:
        """Validate marker/factory/``Box`` keys over ini ``defaults`` (``kwargs`` win).

        Raises ``SpecError`` for an unknown key or a bad value: ``source`` names where
        ``kwargs`` came from (``sandbox``, ``nsbox_factory``, ``Box``); a bad default reads
        ``ini(nsbox_memory='lots'): ...``. A default of ``None`` or ``""`` is "not set".
        """
        values: dict[str, Any] = {}
        # where each value came from, for errors: the key as shown, the source, the raw value
        origin: dict[str, tuple[str, str, object]] = {}
        for key, raw in (defaults or {}).items():
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            shown = DEFAULTS_KEY.format(key=key)
            if key not in _VALIDATORS:
                raise _unknown_key(key, raw, defaults_source, shown)
            values[key] = _check(key, _from_ini(key, raw), shown, raw, defaults_source)
            origin[key] = (shown, defaults_source, raw)
        for key, raw in kwargs.items():
            if key not in _VALIDATORS:
                raise _unknown_key(key, raw, source)
            values[key] = _check(key, raw, key, raw, source)
            origin[key] = (key, source, raw)
        _check_combination(values, origin)
        return cls(**values)

    def validate(self, *, source: str = "spec") -> BoxSpec:
        """A new spec with every attribute checked and normalized again.

        For after a hook changed attributes (``spec.memory = "128M"`` comes back as bytes);
        errors read ``spec(memory='lots'): not a size; ...`` unless ``source`` says otherwise.
        """
        return type(self).from_kwargs(
            {f.name: getattr(self, f.name) for f in fields(self)}, source=source)

    def to_kwargs(self) -> dict[str, Any]:
        """The keys that differ from the defaults, as ``from_kwargs`` takes them back."""
        default = type(self)()
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            if f.name == "binds":
                sources = [b.source for b in value]
                if len(set(sources)) == len(sources):
                    value = {b.source: b.target + (":ro" if b.readonly else "") for b in value}
                else:
                    value = list(value)
            elif isinstance(value, (dict, list)):
                value = value.copy()
            out[f.name] = value
        return out

    def describe(self) -> str:
        """One line for reports: ``image=busybox memory=64.0 MiB cpus=0.5 network=none``.

        Shows ``env`` names but never their values (they may be secrets).
        """
        parts = [f"image={self.image}"]
        if self.memory is not None:
            parts.append(f"memory={format_size(self.memory)}")
        if self.cpus is not None:
            parts.append(f"cpus={format_number(self.cpus)}")
        if self.pids is not None:
            parts.append(f"pids={self.pids}")
        parts.append(f"network={self.network}")
        if self.name is not None:
            parts.append(f"name={self.name}")
        if self.hostname is not None:
            parts.append(f"hostname={self.hostname}")
        if self.env:
            parts.append("env=" + ",".join(self.env))
        if self.user is not None:
            parts.append(f"user={self.user}")
        if self.binds:
            parts.append("binds=" + ",".join(str(b) for b in self.binds))
        if self.timeout is not None:
            parts.append(f"timeout={format_duration(self.timeout)}")
        if self.rate is not None:
            parts.append(f"rate={format_rate(self.rate)}")
        if self.latency is not None:
            parts.append(f"latency={format_duration(self.latency)}")
        if self.jitter is not None:
            parts.append(f"jitter={format_duration(self.jitter)}")
        if self.loss is not None:
            parts.append(f"loss={format_number(self.loss)}%")
        if self.privileged:
            parts.append("privileged")
        if self.cap_add:
            parts.append("cap_add=" + ",".join(self.cap_add))
        if self.cap_drop:
            parts.append("cap_drop=" + ",".join(self.cap_drop))
        if not self.seccomp:
            parts.append("seccomp=off")
        if self.isolate:
            parts.append("isolate")
        return " ".join(parts)


def _check(key: str, value: object, shown: str, raw: object, source: str) -> Any:
    """Run ``key``'s validator; a problem becomes a ``SpecError`` about ``raw``."""
    try:
        return _VALIDATORS[key](value)
    except ValueError as exc:
        raise SpecError(shown, raw, str(exc), EXAMPLES[key], source) from None


def _check_combination(values: Mapping[str, Any],
                       origin: Mapping[str, tuple[str, str, object]]) -> None:
    """Rules between keys: jitter needs latency, shaping needs the box's own network, and
    no capability is both added and dropped."""
    def error(key: str, problem: str, example: str | None) -> SpecError:
        shown, source, raw = origin[key]
        return SpecError(shown, raw, problem, example, source)

    if values.get("jitter") is not None and values.get("latency") is None:
        raise error("jitter", "jitter needs a latency", "latency='50ms', jitter='10ms'")
    if values.get("network") != "private":
        for key in SHAPING_KEYS:
            if values.get(key) is not None:
                problem = ("cannot shape the host's network" if values.get("network") == "host"
                           else "shaping needs a private network (network='none' is loopback "
                                "only)")
                raise error(key, problem, "network='private'")
    both = [c for c in values.get("cap_add", ()) if c in values.get("cap_drop", ())]
    if both:
        raise error("cap_add", f"{both[0]!r} is also in cap_drop (keep it in one of them)", None)
