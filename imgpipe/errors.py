"""The error hierarchy (defined in :mod:`imgpipe.formats.errors`, the leaf package).

See that module's docstring for the tree. Import from here in code above ``formats``.
"""

from imgpipe.formats import errors as _errors
from imgpipe.formats.errors import *  # noqa: F403 (the whole tree: formats.errors.__all__)

__all__: list[str] = []
__all__ += _errors.__all__
