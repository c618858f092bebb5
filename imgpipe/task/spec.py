"""The OCI runtime spec (``config.json``) for a container run from an image.

The base is containerd's default Linux spec (``pkg/oci/spec.go``, ``mounts.go``, as of
containerd 2.x), then the image config applied as ``WithImageConfigArgs`` does, then the
command line's options:

* namespaces pid, ipc, uts, mount and network (the last dropped by ``--net host``);
* the default mounts /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (ro), /run, plus
  a read-only cgroup mount at /sys/fs/cgroup as nerdctl and Docker add, so a container
  can read its own limits;
* containerd 2.x's capability set (MKNOD, NET_RAW, SETFCAP, SYS_CHROOT and AUDIT_WRITE
  were dropped from 1.x's), ``noNewPrivileges: true``, RLIMIT_NOFILE 1024:1024, masked
  and read-only /proc and /sys paths, a deny-all device cgroup with ctr's default
  devices allowed (``WithDefaultUnixDevices``); cgroups path ``/imgpipe/<id>`` (containerd's
  ``/<namespace>/<id>``);
* args = Entrypoint + (Cmd, or the command line's args); ``--entrypoint`` replaces
  Entrypoint and drops the image's Cmd (Docker's rule); env = image Env (or the default
  PATH when it sets none) with ``-e``/``--env-file`` values replacing by key, later wins;
  cwd = WorkingDir or ``/`` (the runtime creates it inside the rootfs if missing).

Everything here is pure: :func:`build_spec` takes the resolved user and returns a dict.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple

from imgpipe.errors import InvalidArgument
from imgpipe.formats._record import FrozenValue

from .user import ResolvedUser

__all__ = [
    "CGROUP_PARENT",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH_ENV",
    "OCI_VERSION",
    "ContainerSettings",
    "Volume",
    "build_spec",
    "default_spec",
    "merge_env",
    "parse_env_file",
    "parse_volume",
    "pass_host_env",
    "resolve_args",
]

#: The runtime-spec version we write (runc 1.1 reads 1.0.x specs; we use nothing newer).
OCI_VERSION: Final = "1.0.2"
#: containerd's defaultUnixEnv: used when the image sets no Env at all.
DEFAULT_PATH_ENV: Final = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: containerd 2.x's defaultUnixCaps.
DEFAULT_CAPABILITIES: Final = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
)
#: containerd puts a container's cgroup at /<namespace>/<id>; ours is the "imgpipe" one.
CGROUP_PARENT: Final = "/imgpipe"
#: Size of the tmpfs mounts (/dev, /dev/shm, /run), containerd's.
_TMPFS_SIZE: Final = "size=65536k"

_MASKED_PATHS: Final = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
_READONLY_PATHS: Final = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# ctr's WithDefaultUnixDevices: (type, major, minor) allowed in the device cgroup; runc
# creates the nodes of its own default set (null, zero, full, random, urandom, tty).
_ALLOWED_DEVICES: Final = (
    ("c", 1, 3),  # /dev/null
    ("c", 1, 8),  # /dev/random
    ("c", 1, 7),  # /dev/full
    ("c", 5, 0),  # /dev/tty
    ("c", 1, 5),  # /dev/zero
    ("c", 1, 9),  # /dev/urandom
    ("c", 5, 1),  # /dev/console
    ("c", 136, None),  # /dev/pts/*
    ("c", 5, 2),  # /dev/ptmx
    ("c", 10, 200),  # /dev/net/tun
)

NetMode = Literal["private", "none", "host"]

#: CFS period for --cpus, as Docker and nerdctl use (100 ms).
CPU_PERIOD_US: Final = 100_000


# A NamedTuple, not a frozen dataclass: ~1 ms less to define on every `imgpipe run`.
class Volume(NamedTuple):
    """``-v SRC:DST[:ro]``: a bind mount of the host's ``source`` at ``destination``."""

    source: str
    destination: str
    read_only: bool = False


def parse_volume(text: str) -> Volume:
    """Parse ``SRC:DST[:ro|rw]``; both paths absolute. InvalidArgument otherwise."""
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw"):
        raise InvalidArgument(f"invalid volume {text!r}: want SRC:DST[:ro]")
    src, dst = parts
    if not os.path.isabs(src) or not os.path.isabs(dst):
        raise InvalidArgument(f"invalid volume {text!r}: both paths must be absolute")
    return Volume(os.path.normpath(src), os.path.normpath(dst), mode == "ro")


def parse_env_file(text: str) -> list[str]:
    """The ``K=V`` lines of an env file, as Docker reads ``--env-file``: blank lines and
    ``#`` comments skipped; a bare ``K`` takes ``K``'s value from our environment (and is
    dropped if unset). InvalidArgument for a line with an empty name."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, eq, _ = line.partition("=")
        if not key.strip() or " " in key.strip():
            raise InvalidArgument(f"env file line {n}: invalid variable name {key!r}")
        if eq:
            out.append(line)
        elif key in os.environ:
            out.append(f"{key}={os.environ[key]}")
    return out


def pass_host_env(items: Iterable[str]) -> list[str]:
    """``-e`` values as Docker reads them: ``K=V`` as it is; a bare ``K`` takes ``K``'s
    value from our environment, and stays bare when we have none (which removes ``K``
    from the container's environment, see :func:`merge_env`, as Docker does)."""
    return [
        f"{item}={os.environ[item]}" if "=" not in item and item in os.environ else item
        for item in items
    ]


def merge_env(image_env: Sequence[str], overrides: Iterable[str]) -> list[str]:
    """containerd's ``replaceOrAppendEnvValues``: the image's env (or the default PATH if
    the image sets none), each override replacing the variable of the same name in
    place or appended, later overrides winning. A bare ``K`` (no ``=``) in overrides
    removes ``K``."""
    env: dict[str, str | None] = {}
    for item in image_env or (DEFAULT_PATH_ENV,):
        key, _, _ = item.partition("=")
        env[key] = item
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}")
        env[key] = item if eq else None
    return [v for v in env.values() if v is not None]


def resolve_args(
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    args: Sequence[str] = (),
    *,
    entrypoint_override: Sequence[str] | None = None,
) -> list[str]:
    """The process args: Entrypoint + (args if any, else Cmd).

    ``entrypoint_override`` (``--entrypoint``) replaces the image's Entrypoint and drops
    its Cmd, as Docker does; an empty override clears the Entrypoint. InvalidArgument when
    the result is empty (nothing to run).
    """
    if entrypoint_override is not None:
        entrypoint, cmd = [a for a in entrypoint_override if a], None
    out = [*(entrypoint or ()), *(args or cmd or ())]
    if not out:
        raise InvalidArgument("no command: the image sets neither Entrypoint nor Cmd")
    return out


class ContainerSettings(FrozenValue):
    """What the command line says about one container (the image config aside).

    ``args`` replaces the image's Cmd; ``entrypoint`` (None = the image's) as
    :func:`resolve_args`; ``env`` entries ``K=V`` in order, later wins; ``user`` and
    ``workdir`` override the image's when not empty; ``memory`` in bytes, ``cpus`` as a
    fraction of CPUs, ``pids_limit`` a process count (None = no limit). (A hand-written
    value class, not a dataclass: every run defines it.)
    """

    __slots__ = (
        "args",
        "cpus",
        "entrypoint",
        "env",
        "extra_mounts",
        "hostname",
        "memory",
        "net",
        "pids_limit",
        "read_only",
        "terminal",
        "user",
        "volumes",
        "workdir",
    )
    args: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    env: tuple[str, ...]
    user: str
    workdir: str
    volumes: tuple[Volume, ...]
    read_only: bool
    net: NetMode
    terminal: bool
    hostname: str
    memory: int | None
    cpus: float | None
    pids_limit: int | None
    extra_mounts: tuple[Mapping[str, Any], ...]

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's was)
        self,
        args: tuple[str, ...] = (),
        entrypoint: tuple[str, ...] | None = None,
        env: tuple[str, ...] = (),
        user: str = "",
        workdir: str = "",
        volumes: tuple[Volume, ...] = (),
        read_only: bool = False,
        net: NetMode = "private",
        terminal: bool = False,
        hostname: str = "",
        memory: int | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        extra_mounts: tuple[Mapping[str, Any], ...] = (),
    ) -> None:
        if net not in ("private", "none", "host"):
            raise InvalidArgument(f"invalid network mode {net!r}: want host or none")
        if memory is not None and memory <= 0:
            raise InvalidArgument(f"invalid memory limit {memory}: must be positive")
        if cpus is not None and not 0 < cpus <= 4096:
            raise InvalidArgument(f"invalid --cpus {cpus}: must be above 0")
        if pids_limit is not None and (pids_limit == 0 or pids_limit < -1):
            raise InvalidArgument(
                f"invalid pids limit {pids_limit} (a positive count, or -1 for unlimited)"
            )
        if workdir and not workdir.startswith("/"):
            raise InvalidArgument(f"working directory {workdir!r} must be absolute")
        self._set(
            args=args,
            entrypoint=entrypoint,
            env=env,
            user=user,
            workdir=workdir,
            volumes=volumes,
            read_only=read_only,
            net=net,
            terminal=terminal,
            hostname=hostname,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            extra_mounts=extra_mounts,
        )


def default_spec(container_id: str) -> dict[str, Any]:
    """containerd's default Linux spec for ``container_id`` (a fresh dict each call)."""
    caps = list(DEFAULT_CAPABILITIES)
    devices: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for kind, major, minor in _ALLOWED_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": kind, "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        devices.append(rule)
    return {
        "ociVersion": OCI_VERSION,
        "root": {"path": "rootfs"},
        "process": {
            "cwd": "/",
            "noNewPrivileges": True,
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [],
            "capabilities": {"bounding": caps, "permitted": caps, "effective": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": [
            _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
            _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", _TMPFS_SIZE),
            _mount(
                "/dev/pts",
                "devpts",
                "devpts",
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ),
            _mount(
                "/dev/shm",  # noqa: S108 (the container's /dev/shm, not a host temp file)
                "tmpfs",
                "shm",
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                _TMPFS_SIZE,
            ),
            _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
            _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
            _mount(
                "/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro"
            ),
            _mount("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", _TMPFS_SIZE),
        ],
        "linux": {
            "maskedPaths": list(_MASKED_PATHS),
            "readonlyPaths": list(_READONLY_PATHS),
            "cgroupsPath": f"{CGROUP_PARENT}/{container_id}",
            "resources": {"devices": devices},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        },
    }


def _mount(dest: str, type_: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": dest, "type": type_, "source": source, "options": list(options)}


def build_spec(
    container_id: str,
    image: Any,
    settings: ContainerSettings,
    user: ResolvedUser,
) -> dict[str, Any]:
    """The full spec: :func:`default_spec`, the image config ``image`` (a
    :class:`~imgpipe.formats.config.ContainerConfig`, or anything with its ``env``,
    ``entrypoint``, ``cmd`` and ``working_dir``), then ``settings``. ``user`` is the
    user already resolved against the rootfs (:func:`~imgpipe.task.user.resolve_user`).

    InvalidArgument when there is nothing to run.
    """
    spec = default_spec(container_id)
    proc = spec["process"]
    linux = spec["linux"]
    proc["args"] = resolve_args(
        image.entrypoint, image.cmd, settings.args, entrypoint_override=settings.entrypoint
    )
    hostname = settings.hostname or container_id[:63]
    env_extra: list[str] = []
    if settings.net == "host":
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
        # ctr --net-host: the host's names and resolver, and its hostname unless told.
        for f in ("/etc/hosts", "/etc/resolv.conf"):
            if os.path.exists(f):
                spec["mounts"].append(_mount(f, "bind", f, "rbind", "ro"))
        if not settings.hostname:
            hostname = os.uname().nodename
        env_extra.append(f"HOSTNAME={hostname}")
    spec["hostname"] = hostname
    proc["env"] = merge_env(image.env, [*env_extra, *settings.env])
    proc["cwd"] = settings.workdir or image.working_dir or "/"
    proc["user"] = user.to_spec()
    if settings.terminal:
        proc["terminal"] = True
        if not any(e.startswith("TERM=") for e in proc["env"]):
            proc["env"].append("TERM=xterm")
    if settings.read_only:
        spec["root"]["readonly"] = True
    for v in settings.volumes:
        opts = ["rbind", "ro" if v.read_only else "rw"]
        spec["mounts"].append(_mount(v.destination, "bind", v.source, *opts))
    spec["mounts"].extend(dict(m) for m in settings.extra_mounts)
    res = linux["resources"]
    if settings.memory is not None:
        res["memory"] = {"limit": settings.memory}
    if settings.cpus is not None:
        res["cpu"] = {"quota": round(settings.cpus * CPU_PERIOD_US), "period": CPU_PERIOD_US}
    if settings.pids_limit is not None:
        res["pids"] = {"limit": settings.pids_limit}
    return spec
