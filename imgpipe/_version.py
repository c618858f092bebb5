"""The version, in one place: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
``imgpipe --version`` and ``imgpipe.__version__`` import it. Reading it from the installed
metadata instead (``importlib.metadata``) cost ~20 ms of imports on every ``--version``."""

__version__ = "0.1.0"
