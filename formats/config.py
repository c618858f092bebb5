"""Image configuration (OCI image config / Docker image JSON v1.2), parsed strictly.

The config says how to run an image (user, env, entrypoint, cmd...), which platform it
is for, and the uncompressed digests of its layers (``rootfs.diff_ids``), which the
unpacker checks every applied layer against and from which chain IDs are computed.

Like manifests, a parsed config keeps its raw bytes and their sha256 digest, which is
the image ID Docker shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, NamedTuple

from ._json import (
    MAX_DOCUMENT_SIZE,
    BytesLike,
    as_bytes,
    load_object,
    opt_list,
    opt_object,
    opt_str,
)
from ._record import NOT_GIVEN, Record, _set
from .descriptor import str_map
from .digest import Digest
from .errors import InvalidDigest, MalformedDocument
from .platform import Platform

__all__ = ["ContainerConfig", "History", "ImageConfig", "parse_config"]


class _NoLabels(Mapping[str, str]):
    """The labels of a ContainerConfig made without any: empty and read-only, as the one
    default is shared, and picklable (a mappingproxy is not), back to the same object."""

    __slots__ = ()

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "_NO_LABELS"  # pickle: this module's global of that name


_NO_LABELS: Final[Mapping[str, str]] = _NoLabels()


# NamedTuples, not frozen dataclasses: the same equality, hash, repr and immutability, and
# ~0.2 ms each to define instead of ~1.2 ms, on the start-up of every `imgpipe run`.
class History(NamedTuple):
    """One ``history`` entry. ``empty_layer`` entries have no layer in ``diff_ids``."""

    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False


class ContainerConfig(NamedTuple):
    """The ``config`` object: defaults for a container run from the image.

    ``entrypoint`` and ``cmd`` are None when the image does not set them (absent or
    null) and ``()`` when it sets them to an empty list. The two are kept apart because a
    runner may treat "unset" and "explicitly empty" differently (an explicit empty
    Entrypoint resets an inherited one), and a rewritten config must say what the
    original said.
    ``exposed_ports`` and ``volumes`` are the keys of their JSON objects, in order.
    """

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: Mapping[str, str] = _NO_LABELS
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


class ImageConfig(Record):
    """A parsed image config; build it with :func:`parse_config`.

    ``digest`` is the sha256 of ``raw`` (the config descriptor's digest, Docker's image
    ID). ``diff_ids`` are the layers' uncompressed digests, base layer first. A frozen
    value: equal when every field is, hashed by ``digest``, shown without ``raw``.
    """

    __match_args__ = (  # os_features, keyword-only, is not among them
        "architecture",
        "os",
        "variant",
        "os_version",
        "created",
        "author",
        "config",
        "diff_ids",
        "history",
        "raw",
        "digest",
    )
    _fields = (*__match_args__, "os_features")
    _repr_fields = tuple(f for f in _fields if f != "raw")

    architecture: str
    os: str
    variant: str
    os_version: str
    created: str
    author: str
    config: ContainerConfig
    diff_ids: tuple[Digest, ...]
    history: tuple[History, ...]
    raw: bytes
    digest: Digest
    os_features: tuple[str, ...]

    def __init__(  # noqa: PLR0917 (the dataclass it was took its fields positionally)
        self,
        architecture: str,
        os: str,
        variant: str,
        os_version: str,
        created: str,
        author: str,
        config: ContainerConfig,
        diff_ids: tuple[Digest, ...],
        history: tuple[History, ...],
        raw: bytes,
        digest: Digest,
        *,
        os_features: tuple[str, ...] = (),
    ) -> None:
        _set(self, "architecture", architecture)
        _set(self, "os", os)
        _set(self, "variant", variant)
        _set(self, "os_version", os_version)
        _set(self, "created", created)
        _set(self, "author", author)
        _set(self, "config", config)
        _set(self, "diff_ids", diff_ids)
        _set(self, "history", history)
        _set(self, "raw", raw)
        _set(self, "digest", digest)
        _set(self, "os_features", os_features)

    def __hash__(self) -> int:
        return hash(self.digest)

    def replace(
        self,
        *,
        architecture: str = NOT_GIVEN,
        os: str = NOT_GIVEN,
        variant: str = NOT_GIVEN,
        os_version: str = NOT_GIVEN,
        created: str = NOT_GIVEN,
        author: str = NOT_GIVEN,
        config: ContainerConfig = NOT_GIVEN,
        diff_ids: tuple[Digest, ...] = NOT_GIVEN,
        history: tuple[History, ...] = NOT_GIVEN,
        raw: bytes = NOT_GIVEN,
        digest: Digest = NOT_GIVEN,
        os_features: tuple[str, ...] = NOT_GIVEN,
    ) -> ImageConfig:
        """A copy with the given fields changed. Nothing re-serialises ``raw`` or checks
        ``digest``: a changed config is new JSON, parsed with :func:`parse_config`."""
        return self._replaced(
            architecture=architecture,
            os=os,
            variant=variant,
            os_version=os_version,
            created=created,
            author=author,
            config=config,
            diff_ids=diff_ids,
            history=history,
            raw=raw,
            digest=digest,
            os_features=os_features,
        )

    def platform(self) -> Platform:
        """The platform the image was built for, as written (not normalised)."""
        return Platform(
            os=self.os,
            architecture=self.architecture,
            variant=self.variant,
            os_version=self.os_version,
            os_features=self.os_features,
        )


def _str_list(
    obj: Mapping[str, Any], key: str, what: str, *, lone_string: bool = False
) -> tuple[str, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    # Docker's strslice type (Entrypoint, Cmd) also accepts a lone string (old images).
    if lone_string and isinstance(v, str):
        return (v,)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise MalformedDocument(f"{what}: {key!r} must be a list of strings")
    return tuple(v)


def _key_set(obj: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    # ExposedPorts and Volumes are Go map[string]struct{}: only the keys mean anything.
    v = opt_object(obj, key, what)
    return tuple(v) if v else ()


def _container_config(obj: dict[str, Any] | None) -> ContainerConfig:
    if obj is None:
        return ContainerConfig()
    what = "image config 'config'"
    env = _str_list(obj, "Env", what) or ()
    return ContainerConfig(
        user=opt_str(obj, "User", what),
        env=env,
        entrypoint=_str_list(obj, "Entrypoint", what, lone_string=True),
        cmd=_str_list(obj, "Cmd", what, lone_string=True),
        working_dir=opt_str(obj, "WorkingDir", what),
        labels=str_map(obj.get("Labels"), f"{what} Labels"),
        stop_signal=opt_str(obj, "StopSignal", what),
        exposed_ports=_key_set(obj, "ExposedPorts", what),
        volumes=_key_set(obj, "Volumes", what),
    )


def _history(items: list[Any] | None) -> tuple[History, ...]:
    out = []
    for i, h in enumerate(items or ()):
        what = f"image config history[{i}]"
        if not isinstance(h, dict):
            raise MalformedDocument(f"{what} must be an object")
        empty = h.get("empty_layer", False)
        if empty is None:
            empty = False
        if not isinstance(empty, bool):
            raise MalformedDocument(f"{what}: 'empty_layer' must be a boolean")
        out.append(
            History(
                created=opt_str(h, "created", what),
                created_by=opt_str(h, "created_by", what),
                author=opt_str(h, "author", what),
                comment=opt_str(h, "comment", what),
                empty_layer=empty,
            )
        )
    return tuple(out)


def _diff_ids(obj: dict[str, Any]) -> tuple[Digest, ...]:
    rootfs = opt_object(obj, "rootfs", "image config")
    if rootfs is None:
        raise MalformedDocument("image config: missing required 'rootfs'")
    if rootfs.get("type") != "layers":
        raise MalformedDocument(
            f"image config: rootfs.type must be 'layers', not {rootfs.get('type')!r}"
        )
    items = opt_list(rootfs, "diff_ids", "image config rootfs")
    if items is None:
        raise MalformedDocument("image config: missing required rootfs.diff_ids")
    out = []
    for i, d in enumerate(items):
        try:
            out.append(Digest.parse(d))
        except InvalidDigest as e:
            raise MalformedDocument(f"image config rootfs.diff_ids[{i}]: {e}") from None
    return tuple(out)


def parse_config(raw: BytesLike) -> ImageConfig:
    """Parse an image config, keeping ``raw`` and its sha256.

    Raises ResourceLimit above MAX_DOCUMENT_SIZE bytes; MalformedDocument if it is not a
    JSON object, ``architecture`` or ``os`` is missing, a field has the wrong type,
    ``rootfs.type`` is not ``layers`` or a diff ID is not a valid digest. Unknown fields
    (Docker's ``container_config``, ``docker_version``...) are ignored.
    """
    data = as_bytes(raw, "image config")
    obj = load_object(data, "image config", limit=MAX_DOCUMENT_SIZE)
    what = "image config"
    arch, os_ = obj.get("architecture"), obj.get("os")
    if not isinstance(arch, str) or not arch or not isinstance(os_, str) or not os_:
        raise MalformedDocument("image config needs non-empty string 'architecture' and 'os'")
    features = opt_list(obj, "os.features", what) or []
    if not all(isinstance(f, str) for f in features):
        raise MalformedDocument("image config: 'os.features' must be a list of strings")
    return ImageConfig(
        architecture=arch,
        os=os_,
        variant=opt_str(obj, "variant", what),
        os_version=opt_str(obj, "os.version", what),
        created=opt_str(obj, "created", what),
        author=opt_str(obj, "author", what),
        config=_container_config(opt_object(obj, "config", what)),
        diff_ids=_diff_ids(obj),
        history=_history(opt_list(obj, "history", what)),
        raw=data,
        digest=Digest.from_bytes(data),
        os_features=tuple(features),
    )
