"""pytest-nsbox: a throw-away Linux container for every test.

Names are imported lazily (PEP 562) so that ``pytest --help`` and the zygote, which import
this package, load nothing they do not use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .build import ContainerfileBuilder as _ContainerfileBuilder
from .images.build import install_default_builder as _install_default_builder

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .cgroups.base import Stats
    from .errors import (BoxClosed, BoxError, CgroupError, CommandFailed, HostNotSupported,
                         ImageError, NsboxError, SpecError)
    from .model.image import Image
    from .network.errors import NetworkError, PortRefused, PortTimeout
    from .runtime.box import Box
    from .runtime.process import Process
    from .model.results import Change, RunResult
    from .model.spec import BoxSpec

# The package's one wiring point for the default Containerfile builder: the image store
# (L2) and the engine (L3) that makes it cannot import the builder (L4, its RUN steps run
# boxes), so every Engine not given another gets this one (images.build.default_builder).
# Both modules are small; the builder's own load at the first build.
_install_default_builder(_ContainerfileBuilder())

_EXPORTS = {
    "Box": "runtime.box", "Process": "runtime.process", "RunResult": "model.results",
    "Change": "model.results", "Stats": "cgroups.base", "Image": "model.image",
    "BoxSpec": "model.spec", "NsboxError": "errors", "SpecError": "errors", "BoxError": "errors",
    "BoxClosed": "errors", "CgroupError": "errors", "CommandFailed": "errors",
    "HostNotSupported": "errors", "ImageError": "errors", "NetworkError": "network.errors",
    "PortTimeout": "network.errors", "PortRefused": "network.errors",
}
__all__ = ["Box", "BoxClosed", "BoxError", "BoxSpec", "CgroupError", "Change", "CommandFailed",
           "HostNotSupported", "Image", "ImageError", "NetworkError", "NsboxError",
           "PortRefused", "PortTimeout", "Process", "RunResult", "SpecError", "Stats"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_nsbox' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
