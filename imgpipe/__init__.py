"""imgpipe: containerd's image pipeline in Python.

Pull images from OCI layouts, archives and (soon) registries into a content-addressed
store, verifying every byte; inspect, tag, export and garbage-collect them. The functions
here are thin compositions of the stages in :mod:`imgpipe.pipeline`; build your own
pipelines from those stages to add a step of your own.

Errors are the classes in :mod:`imgpipe.errors`, rooted in :class:`ImgpipeError`.
"""

from __future__ import annotations

from importlib import import_module

# Not typing's: importing typing costs ~10 ms, and `imgpipe --version` imports this
# package and nothing else (cli/entry.py). mypy treats a name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from imgpipe.api import (
        ImageDetails,
        IngestDetails,
        LeaseDetails,
        ManifestDetails,
        RemovedImages,
        SourceDetails,
        content_caches,
        content_ingests,
        content_list,
        content_remove,
        content_verify,
        gc,
        images,
        inspect,
        inspect_source,
        pull,
        push,
        remove_image,
        remove_images,
        tag,
    )
    from imgpipe.blobs import content_get
    from imgpipe.config import default_registry_config
    from imgpipe.containers import ContainerStatus, list_containers
    from imgpipe.conversion import Converter, ConvertOptions, ConvertReport, convert
    from imgpipe.errors import (
        AlreadyExists,
        Conflict,
        CorruptLayer,
        DigestMismatch,
        FailedPrecondition,
        ImgpipeError,
        IntegrityError,
        InvalidArgument,
        InvalidDigest,
        InvalidReference,
        MalformedDocument,
        NoSpace,
        NotFound,
        RangeNotSupported,
        ReadOnlyStore,
        ResourceLimit,
        SizeMismatch,
        StorageError,
        Unauthorized,
        Unavailable,
        Unsupported,
    )
    from imgpipe.estargz import estargz_cat, estargz_list
    from imgpipe.events import Event, EventKind, Observer
    from imgpipe.lazy import mount_lazy
    from imgpipe.lazy.pulling import pull_lazy
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
        container_logs,
        parse_volume,
        remove_container,
        run,
        run_detached,
        stop_container,
        wait_container,
    )
    from imgpipe.task.lazyroot import LazyRun
    from imgpipe.task.spec import parse_env_file, pass_host_env
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
            "IngestDetails",
            "LeaseDetails",
            "ManifestDetails",
            "content_caches",
            "content_ingests",
            "content_list",
            "content_remove",
            "content_verify",
            "gc",
            "images",
            "inspect",
            "lease_remove",
            "leases",
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
    **dict.fromkeys(
        ("RemovedImages", "SourceDetails", "inspect_source", "remove_images"), "imgpipe.api"
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
            "container_logs",
            "parse_volume",
            "remove_container",
            "run",
            "run_detached",
            "stop_container",
            "wait_container",
        ),
        "imgpipe.task",
    ),
    "parse_env_file": "imgpipe.task.spec",
    "LazyRun": "imgpipe.task.lazyroot",
    "pull_lazy": "imgpipe.lazy.pulling",
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
    **dict.fromkeys(("estargz_cat", "estargz_list"), "imgpipe.estargz"),
    "mount_lazy": "imgpipe.lazy",
    **dict.fromkeys(("snapshot_remove", "snapshots_list"), "imgpipe.snapshot_admin"),
    "default_registry_config": "imgpipe.config",
    "pass_host_env": "imgpipe.task.spec",
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
        value: Any = import_module("imgpipe._version").__version__
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
    "CorruptLayer",
    "DigestMismatch",
    "Event",
    "EventKind",
    "FailedPrecondition",
    "ImageDetails",
    "ImagePlan",
    "ImgpipeError",
    "IngestDetails",
    "IntegrityError",
    "Interrupted",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidReference",
    "ItemResult",
    "Kept",
    "LazyRun",
    "LeaseDetails",
    "MalformedDocument",
    "ManifestDetails",
    "NoSpace",
    "NotFound",
    "Observer",
    "Pipeline",
    "PlanItem",
    "RangeNotSupported",
    "ReadOnlyStore",
    "RemovedImages",
    "ResourceLimit",
    "SizeMismatch",
    "SourceDetails",
    "Stage",
    "StorageError",
    "Store",
    "Task",
    "TransportOptions",
    "Unauthorized",
    "Unavailable",
    "UnpackResult",
    "Unsupported",
    "WorkerSettings",
    "__version__",
    "container_logs",
    "content_caches",
    "content_get",
    "content_ingests",
    "content_list",
    "content_remove",
    "content_verify",
    "convert",
    "convert_many",
    "default_registry_config",
    "default_root",
    "estargz_cat",
    "estargz_list",
    "export_rootfs",
    "gc",
    "images",
    "inspect",
    "inspect_source",
    "lease_remove",
    "leases",
    "list_containers",
    "login",
    "logout",
    "merge_reports",
    "mount",
    "mount_lazy",
    "normalize_name",
    "parse_env_file",
    "parse_executor",
    "parse_shard",
    "parse_volume",
    "pass_host_env",
    "prepare_rootfs",
    "pull",
    "pull_lazy",
    "pull_unpack",
    "push",
    "read_plan",
    "read_report",
    "registry_host",
    "remove_container",
    "remove_image",
    "remove_images",
    "run",
    "run_detached",
    "run_plan",
    "snapshot_remove",
    "snapshots_list",
    "stop_container",
    "sync_plan",
    "tag",
    "umount",
    "unpack",
    "wait_container",
    "write_plan",
]
