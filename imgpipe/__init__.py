"""imgpipe: containerd's image pipeline in Python.

Pull images from OCI layouts, archives and (soon) registries into a content-addressed
store, verifying every byte; inspect, tag, export and garbage-collect them. The functions
here are thin compositions of the stages in :mod:`imgpipe.pipeline`; build your own
pipelines from those stages to add a step of your own.

Errors are the classes in :mod:`imgpipe.errors`, rooted in :class:`ImgpipeError`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from imgpipe.blobs import content_get
    from imgpipe.config import default_registry_config
    from imgpipe.containers import ContainerStatus, list_containers
    from imgpipe.conversion import Converter, ConvertOptions, ConvertReport, convert
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
    from imgpipe.events import Event, EventKind, Observer
    from imgpipe.pipeline import (
        Context,
        ImagePlan,
        Pipeline,
        Stage,
        normalize_name,
    )
    from imgpipe.remote.login import login, logout, registry_host
    from imgpipe.remote.options import TransportOptions
    from imgpipe.snapshot_admin import snapshot_remove, snapshots_list
    from imgpipe.store import Store, default_root
    from imgpipe.sync import (
        ItemResult,
        PlanItem,
        WorkerSettings,
        convert_many,
        merge_reports,
        parse_executor,
        parse_shard,
        read_plan,
        read_report,
        run_plan,
        sync_plan,
        write_plan,
    )
    from imgpipe.task import (
        CommandNotExecutable,
        CommandNotFound,
        ContainerSettings,
        Task,
        parse_volume,
        remove_container,
        run,
    )
    from imgpipe.task.spec import parse_env_file
    from imgpipe.unpacking import (
        UnpackResult,
        export_rootfs,
        mount,
        prepare_rootfs,
        pull_unpack,
        umount,
        unpack,
    )

    __version__: str

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# `import imgpipe.formats` or `imgpipe --version` does not pay for the whole pipeline:
# start-up time is part of every command's cost.
_WHERE = {
    **dict.fromkeys(
        (
            "ImageDetails",
            "ManifestDetails",
            "content_list",
            "content_remove",
            "content_verify",
            "gc",
            "images",
            "inspect",
            "pull",
            "push",
            "remove_image",
            "tag",
        ),
        "imgpipe.api",
    ),
    **dict.fromkeys(
        (
            "Context",
            "Event",
            "EventKind",
            "ImagePlan",
            "Observer",
            "Pipeline",
            "Stage",
            "normalize_name",
        ),
        "imgpipe.pipeline",
    ),
    "Store": "imgpipe.store",
    "default_root": "imgpipe.store",
    **dict.fromkeys(
        ("ConvertOptions", "ConvertReport", "Converter", "convert"), "imgpipe.conversion"
    ),
    **dict.fromkeys(
        (
            "CommandNotExecutable",
            "CommandNotFound",
            "ContainerSettings",
            "Task",
            "parse_volume",
            "remove_container",
            "run",
        ),
        "imgpipe.task",
    ),
    "parse_env_file": "imgpipe.task.spec",
    **dict.fromkeys(
        (
            "ItemResult",
            "PlanItem",
            "WorkerSettings",
            "convert_many",
            "merge_reports",
            "parse_executor",
            "parse_shard",
            "read_plan",
            "read_report",
            "run_plan",
            "sync_plan",
            "write_plan",
        ),
        "imgpipe.sync",
    ),
    **dict.fromkeys(("ContainerStatus", "list_containers"), "imgpipe.containers"),
    "content_get": "imgpipe.blobs",
    **dict.fromkeys(("snapshot_remove", "snapshots_list"), "imgpipe.snapshot_admin"),
    "default_registry_config": "imgpipe.config",
    **dict.fromkeys(("login", "logout", "registry_host"), "imgpipe.remote.login"),
    "TransportOptions": "imgpipe.remote.options",
    **dict.fromkeys(
        (
            "UnpackResult",
            "export_rootfs",
            "mount",
            "prepare_rootfs",
            "pull_unpack",
            "umount",
            "unpack",
        ),
        "imgpipe.unpacking",
    ),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value: Any = version("imgpipe")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0.0.0"
    elif name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
    elif name in (errors := import_module("imgpipe.errors")).__all__:
        value = getattr(errors, name)  # an error class: their names are listed there only
    else:
        raise AttributeError(f"module 'imgpipe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AlreadyExists",
    "CommandNotExecutable",
    "CommandNotFound",
    "Conflict",
    "ContainerSettings",
    "ContainerStatus",
    "Context",
    "ConvertOptions",
    "ConvertReport",
    "Converter",
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
    "ItemResult",
    "MalformedDocument",
    "ManifestDetails",
    "NotFound",
    "Observer",
    "Pipeline",
    "PlanItem",
    "ResourceLimit",
    "SizeMismatch",
    "Stage",
    "Store",
    "Task",
    "TransportOptions",
    "Unauthorized",
    "Unavailable",
    "UnpackResult",
    "Unsupported",
    "WorkerSettings",
    "__version__",
    "content_get",
    "content_list",
    "content_remove",
    "content_verify",
    "convert",
    "convert_many",
    "default_registry_config",
    "default_root",
    "export_rootfs",
    "gc",
    "images",
    "inspect",
    "list_containers",
    "login",
    "logout",
    "merge_reports",
    "mount",
    "normalize_name",
    "parse_env_file",
    "parse_executor",
    "parse_shard",
    "parse_volume",
    "prepare_rootfs",
    "pull",
    "pull_unpack",
    "push",
    "read_plan",
    "read_report",
    "registry_host",
    "remove_container",
    "remove_image",
    "run",
    "run_plan",
    "snapshot_remove",
    "snapshots_list",
    "sync_plan",
    "tag",
    "umount",
    "unpack",
    "write_plan",
]
