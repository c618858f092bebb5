"""imgpipe: containerd's image pipeline in Python.

Pull images from OCI layouts, archives and (soon) registries into a content-addressed
store, verifying every byte; inspect, tag, export and garbage-collect them. The functions
here are thin compositions of the stages in :mod:`imgpipe.pipeline`; build your own
pipelines from those stages to add a step of your own.

Errors are the classes in :mod:`imgpipe.errors`, rooted in :class:`ImgpipeError`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from imgpipe.api import (
    ImageDetails,
    ManifestDetails,
    content_list,
    content_remove,
    content_verify,
    gc,
    images,
    inspect,
    pull,
    push,
    remove_image,
    tag,
)
from imgpipe.errors import (
    AlreadyExists,
    Conflict,
    DigestMismatch,
    FailedPrecondition,
    ImgpipeError,
    IntegrityError,
    InvalidArgument,
    InvalidDigest,
    InvalidReference,
    MalformedDocument,
    NotFound,
    ResourceLimit,
    SizeMismatch,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from imgpipe.pipeline import (
    Context,
    Event,
    EventKind,
    ImagePlan,
    Observer,
    Pipeline,
    Stage,
    normalize_name,
)
from imgpipe.store import Store, default_root

try:
    __version__ = version("imgpipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Context",
    "DigestMismatch",
    "Event",
    "EventKind",
    "FailedPrecondition",
    "ImageDetails",
    "ImagePlan",
    "ImgpipeError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidReference",
    "MalformedDocument",
    "ManifestDetails",
    "NotFound",
    "Observer",
    "Pipeline",
    "ResourceLimit",
    "SizeMismatch",
    "Stage",
    "Store",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "__version__",
    "content_list",
    "content_remove",
    "content_verify",
    "default_root",
    "gc",
    "images",
    "inspect",
    "normalize_name",
    "pull",
    "push",
    "remove_image",
    "tag",
]
