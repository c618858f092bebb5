"""The container's user: a ``USER`` string resolved against the image's own files.

Grammar (OCI image spec ``config.User``, as containerd's ``WithUser``)::

    name | uid | name:group | uid:gid | uid:group | name:gid

Names are looked up in the rootfs's ``/etc/passwd`` and ``/etc/group``; a numeric uid
that has no passwd entry runs with gid 0 (containerd's rule), an unknown name is an
error. The additional groups are those of ``/etc/group`` that list the user by name
(the group named like the user excluded), with the primary gid first.

Reading an image's files is reading hostile input, so (CVE-2024-40635 and the 2026
/etc/group DoS fixed in containerd):

* the path is resolved *inside* the rootfs: symlinks are followed as if the rootfs were
  ``/`` (absolute targets re-rooted, ``..`` clamped at the top), with
  ``openat2(RESOLVE_IN_ROOT)`` where the kernel has it and an ``O_NOFOLLOW`` walk
  elsewhere, so ``/etc/passwd -> /etc/shadow-of-the-host`` reads the image's file or none;
* the file must be a regular file (checked on an ``O_PATH`` fd before it is opened for
  reading: a device node or FIFO in the image is never opened) and at most
  :data:`MAX_USER_FILE_BYTES`;
* every uid and gid, from the USER string or from the files, must be in
  ``0..``:data:`MAX_ID` (runc's limit; a larger value used to wrap to 0, i.e. root).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Final, NamedTuple

from imgpipe.errors import InvalidArgument, MalformedDocument, NotFound, ResourceLimit
from imgpipe.fs import open_in_root

__all__ = [
    "MAX_ID",
    "MAX_USER_FILE_BYTES",
    "ResolvedUser",
    "UserNotFound",
    "open_in_root",
    "parse_user",
    "resolve_user",
]

#: containerd's ``maxUserFileBytes``: /etc/passwd and /etc/group beyond this are refused.
MAX_USER_FILE_BYTES: Final = 10 << 20
#: runc requires ids to fit a signed 32-bit int (containerd's minUserID..maxUserID).
MAX_ID: Final = 2**31 - 1


class UserNotFound(NotFound):
    """The image has no such user or group."""


# A NamedTuple, not a frozen dataclass: the same equality, hash, repr and immutability, and
# ~0.2 ms to define instead of ~1.2 ms, on the start-up of every verb that imports it.
class ResolvedUser(NamedTuple):
    """The process user of an OCI runtime spec: ``process.user``."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()

    def to_spec(self) -> dict[str, object]:
        return {"uid": self.uid, "gid": self.gid, "additionalGids": list(self.additional_gids)}


def _parse_id(text: str, what: str, user: str) -> int | None:
    """The number ``text`` spells, None if it is a name; InvalidArgument out of range."""
    if not text.isascii() or not text.lstrip("+-").isdigit():
        return None
    value = int(text)
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"invalid USER value {user!r}: {what} out of range 0..{MAX_ID}")
    return value


def parse_user(user: str) -> tuple[str | int, str | int | None]:
    """Split a USER string into ``(user, group)``, numbers as ints, no group as None.

    Pure. InvalidArgument for an empty part, more than one ``:``, or an id outside
    0..:data:`MAX_ID` (``-1``, ``4294967296``: CVE-2024-40635).
    """
    parts = user.split(":")
    if len(parts) > 2 or not all(parts):
        raise InvalidArgument(f"invalid USER value {user!r}: want name|uid[:group|gid]")
    uid = _parse_id(parts[0], "uid", user)
    first: str | int = parts[0] if uid is None else uid
    if len(parts) == 1:
        return first, None
    gid = _parse_id(parts[1], "gid", user)
    return first, parts[1] if gid is None else gid


def _lines(rootfs: str | os.PathLike[str], path: str, use_openat2: bool | None) -> Iterator[str]:
    """The lines of the image's ``path``; nothing if it does not exist."""
    try:
        pfd = open_in_root(rootfs, path, use_openat2=use_openat2)
    except FileNotFoundError:
        return
    except OSError as e:
        raise MalformedDocument(f"image's {path}: {os.strerror(e.errno or 0)}") from None
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedDocument(f"image's {path} is not a regular file")
        if st.st_size > MAX_USER_FILE_BYTES:
            raise ResourceLimit(
                f"image's {path} is {st.st_size} bytes, over the {MAX_USER_FILE_BYTES} limit"
            )
        # Reopen the checked inode for reading through our own fd table (not a path in
        # the image, so nothing can be swapped in between).
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(pfd)
    with open(fd, "rb") as f:
        seen = 0
        for raw in f:
            seen += len(raw)
            if seen > MAX_USER_FILE_BYTES:  # grew after the fstat
                raise ResourceLimit(f"image's {path} is over the {MAX_USER_FILE_BYTES} limit")
            line = raw.decode("utf-8", "surrogateescape").strip()
            if line and not line.startswith("#"):
                yield line


def _file_id(text: str) -> int | None:
    """An id field of passwd/group; None if it is not a number (the line is skipped, as
    Go's parser does). Not range-checked here: only the entries used are (:func:`_used`),
    so an unrelated ``nfsnobody:x:4294967294`` line does not break an image."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def _used(value: int, what: str, path: str) -> int:
    if value > MAX_ID:
        raise InvalidArgument(f"image's {path}: {what} {value} out of range 0..{MAX_ID}")
    return value


def _passwd(
    rootfs: str | os.PathLike[str], use_openat2: bool | None
) -> Iterator[tuple[str, int, int]]:
    for line in _lines(rootfs, "/etc/passwd", use_openat2):
        f = line.split(":")
        if len(f) < 4:
            continue
        uid, gid = _file_id(f[2]), _file_id(f[3])
        if uid is not None and gid is not None:
            yield f[0], uid, gid


def _groups(
    rootfs: str | os.PathLike[str], use_openat2: bool | None
) -> Iterator[tuple[str, int, list[str]]]:
    for line in _lines(rootfs, "/etc/group", use_openat2):
        f = line.split(":")
        if len(f) < 3:
            continue
        gid = _file_id(f[2])
        if gid is not None:
            yield f[0], gid, [m for m in f[3].split(",") if m] if len(f) > 3 else []


def resolve_user(
    rootfs: str | os.PathLike[str], user: str = "", *, use_openat2: bool | None = None
) -> ResolvedUser:
    """Resolve ``user`` (the image's or ``-u``'s USER; ``""`` is root) in ``rootfs``.

    Raises InvalidArgument for a malformed USER or an id out of range (in the string or
    in the files), UserNotFound for a name the image does not have, MalformedDocument
    when /etc/passwd or /etc/group is not a regular file, ResourceLimit when one is over
    :data:`MAX_USER_FILE_BYTES`. Reads nothing outside ``rootfs``.
    """
    who, group = parse_user(user or "0")
    name: str | None = None
    if isinstance(who, int):
        uid, gid = who, 0
        for entry, e_uid, e_gid in _passwd(rootfs, use_openat2):
            if e_uid == uid:
                name, gid = entry, _used(e_gid, f"gid of user {entry!r}", "/etc/passwd")
                break
    else:
        for entry, e_uid, e_gid in _passwd(rootfs, use_openat2):
            if entry == who:
                name = entry
                uid = _used(e_uid, f"uid of user {entry!r}", "/etc/passwd")
                gid = _used(e_gid, f"gid of user {entry!r}", "/etc/passwd")
                break
        else:
            raise UserNotFound(f"no user {who!r} in the image's /etc/passwd")
    if isinstance(group, int):
        gid = group
    elif group is not None:
        for g_name, g_gid, _ in _groups(rootfs, use_openat2):
            if g_name == group:
                gid = _used(g_gid, f"gid of group {g_name!r}", "/etc/group")
                break
        else:
            raise UserNotFound(f"no group {group!r} in the image's /etc/group")
    extra: list[int] = [gid]
    if name is not None:
        for g_name, g_gid, members in _groups(rootfs, use_openat2):
            if g_name != name and name in members and g_gid not in extra:
                extra.append(_used(g_gid, f"gid of group {g_name!r}", "/etc/group"))
    return ResolvedUser(uid, gid, tuple(extra))
