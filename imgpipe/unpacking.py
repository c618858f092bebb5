"""The unpack verbs and stages: moved to the package :mod:`imgpipe.unpack`."""

# shim for the spine merge: remove (the CLI, imgpipe/__init__.py, api.py and benchmarks
# import this module; they switch to imgpipe.unpack)

from __future__ import annotations

from imgpipe.unpack import *  # noqa: F403
from imgpipe.unpack import __all__  # noqa: F401 (the names the star import brought)
