"""The error hierarchy (defined in :mod:`imgpipe.formats.errors`, the leaf package).

See that module's docstring for the tree. Import from here in code above ``formats``.
"""

from imgpipe.formats.errors import (
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

__all__ = [
    "AlreadyExists",
    "Conflict",
    "DigestMismatch",
    "FailedPrecondition",
    "ImgpipeError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidReference",
    "MalformedDocument",
    "NotFound",
    "ResourceLimit",
    "SizeMismatch",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
]
