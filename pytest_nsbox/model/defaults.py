"""Values several layers share, each defined here once."""
from __future__ import annotations

#: The ``PATH`` a box's command gets when neither image nor spec sets one: Docker's and
#: BuildKit's ``system.DefaultPathEnv("linux")`` (moby/moby ``oci/defaults.go``), also where
#: the box's init looks a command up when the environment has no PATH (runc does the same).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The init layer's files: written per box (its name and network), never part of a layer,
#: a commit or a diff (as with ``docker commit``/``docker diff``).
INIT_LAYER_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
#: The same, relative to a layer's root (what ``layers.copy_tree(skip=)`` takes).
INIT_LAYER_RELPATHS = frozenset(p.lstrip("/") for p in INIT_LAYER_FILES)
