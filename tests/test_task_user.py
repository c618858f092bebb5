"""USER resolution inside the rootfs: names, ids, groups, and hostile /etc files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgpipe.errors import InvalidArgument, MalformedDocument, ResourceLimit
from imgpipe.fs import openat2_available
from imgpipe.task.user import (
    MAX_USER_FILE_BYTES,
    ResolvedUser,
    UserNotFound,
    open_in_root,
    resolve_user,
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "# a comment line\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "svc:x:1001:1500::/:/bin/false\n"
    "broken line without fields\n"
    "nfsnobody:x:4294967294:4294967294::/:/bin/false\n"
    "wrap:x:4294967296:0::/:/bin/sh\n"
)
GROUP = "root:x:0:\napp:x:1000:app\nstaff:x:50:app,svc\nvideo:x:44:app\nbig:x:4294967296:ghost\n"

#: Both resolvers: the kernel's (openat2 RESOLVE_IN_ROOT) and the userspace walk.
RESOLVERS = [
    pytest.param(
        True,
        id="openat2",
        marks=pytest.mark.skipif(
            not openat2_available(), reason="kernel without openat2: the walk covers this"
        ),
    ),
    pytest.param(False, id="walk"),
]


def make_rootfs(base: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    root = base / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


@pytest.mark.parametrize("use_openat2", RESOLVERS)
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ResolvedUser(0, 0, (0,))),
        ("root", ResolvedUser(0, 0, (0,))),
        ("app", ResolvedUser(1000, 1000, (1000, 50, 44))),
        ("1000", ResolvedUser(1000, 1000, (1000, 50, 44))),
        ("svc", ResolvedUser(1001, 1500, (1500, 50))),
        ("app:staff", ResolvedUser(1000, 50, (50, 44))),
        ("app:7", ResolvedUser(1000, 7, (7, 50, 44))),
        ("1234:5678", ResolvedUser(1234, 5678, (5678,))),
        ("1000:44", ResolvedUser(1000, 44, (44, 50))),
        # a uid without a passwd entry runs with gid 0 (containerd's WithUserID)
        ("4242", ResolvedUser(4242, 0, (0,))),
        ("4242:video", ResolvedUser(4242, 44, (44,))),
    ],
)
def test_resolve(tmp_path: Path, use_openat2: bool, user: str, expected: ResolvedUser) -> None:
    assert resolve_user(make_rootfs(tmp_path), user, use_openat2=use_openat2) == expected


@pytest.mark.parametrize(
    ("user", "error", "match"),
    [
        ("nosuch", UserNotFound, "no user 'nosuch'"),
        ("app:nogroup", UserNotFound, "no group 'nogroup'"),
        # the selected entry's id does not fit: refused, never wrapped to 0 (root)
        ("wrap", InvalidArgument, "out of range"),
        ("nfsnobody", InvalidArgument, "out of range"),
        ("svc:big", InvalidArgument, "out of range"),
        ("4294967296", InvalidArgument, "out of range"),
    ],
)
def test_resolve_errors(tmp_path: Path, user: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_user(make_rootfs(tmp_path), user)


def test_no_etc_files(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None, group=None)
    assert resolve_user(root, "") == ResolvedUser(0, 0, (0,))
    assert resolve_user(root, "12:34") == ResolvedUser(12, 34, (34,))
    with pytest.raises(UserNotFound):
        resolve_user(root, "app")


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_symlink_inside_the_root_is_followed(tmp_path: Path, use_openat2: bool) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "passwd").write_text(PASSWD)
    # absolute target: read as if the rootfs were /
    os.symlink("/usr/share/passwd", root / "etc" / "passwd")
    assert resolve_user(root, "app", use_openat2=use_openat2).uid == 1000
    os.unlink(root / "etc" / "passwd")
    os.symlink("../usr/./share/passwd", root / "etc" / "passwd")
    assert resolve_user(root, "app", use_openat2=use_openat2).uid == 1000


SENTINEL = "app:x:0:0:host file that must never be read:/:/bin/sh\n"


@pytest.mark.parametrize("use_openat2", RESOLVERS)
@pytest.mark.parametrize("how", ["absolute", "dotdot", "dir-link"])
def test_symlink_out_of_the_root_is_not_followed(
    tmp_path: Path, use_openat2: bool, how: str
) -> None:
    """/etc/passwd pointing at a host file that would make "app" root: not read."""
    sentinel_dir = tmp_path / "host"
    sentinel_dir.mkdir()
    (sentinel_dir / "passwd").write_text(SENTINEL)
    root = make_rootfs(tmp_path, passwd=None)
    if how == "absolute":
        os.symlink(str(sentinel_dir / "passwd"), root / "etc" / "passwd")
    elif how == "dotdot":
        os.symlink(
            "../../../../../../../../" + str(sentinel_dir / "passwd"), root / "etc" / "passwd"
        )
    else:
        os.rename(root / "etc", root / "etc.real")
        os.symlink("../host", root / "etc")  # /etc -> ../host clamps to /host: missing
    with pytest.raises(UserNotFound) as err:
        resolve_user(root, "app", use_openat2=use_openat2)
    assert "host file" not in str(err.value)
    # and a numeric user gets gid 0 from nowhere, not the sentinel's entry
    assert resolve_user(root, "0", use_openat2=use_openat2) == ResolvedUser(0, 0, (0,))


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_not_a_regular_file(tmp_path: Path, use_openat2: bool) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    os.mkfifo(root / "etc" / "passwd")  # opening it for reading would block forever
    with pytest.raises(MalformedDocument, match="not a regular file"):
        resolve_user(root, "app", use_openat2=use_openat2)
    os.unlink(root / "etc" / "passwd")
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(MalformedDocument, match="not a regular file"):
        resolve_user(root, "app", use_openat2=use_openat2)


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_symlink_loop(tmp_path: Path, use_openat2: bool) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    os.symlink("passwd", root / "etc" / "passwd")
    with pytest.raises(MalformedDocument):
        resolve_user(root, "app", use_openat2=use_openat2)


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_huge_group_file(tmp_path: Path, use_openat2: bool) -> None:
    root = make_rootfs(tmp_path, group=None)
    with open(root / "etc" / "group", "w") as f:
        line = "g:x:9:" + "m" * 1000 + "\n"
        for _ in range(MAX_USER_FILE_BYTES // len(line) + 2):
            f.write(line)
    assert (root / "etc" / "group").stat().st_size > MAX_USER_FILE_BYTES
    with pytest.raises(ResourceLimit, match="/etc/group"):
        resolve_user(root, "app", use_openat2=use_openat2)


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_huge_sparse_passwd(tmp_path: Path, use_openat2: bool) -> None:
    """A sparse 1 TiB file costs nothing on disk but must not be read."""
    root = make_rootfs(tmp_path, passwd=None)
    with open(root / "etc" / "passwd", "wb") as f:
        f.truncate(1 << 40)
    with pytest.raises(ResourceLimit, match="/etc/passwd"):
        resolve_user(root, "0", use_openat2=use_openat2)


@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_open_in_root_resolves_like_a_chroot(tmp_path: Path, use_openat2: bool) -> None:
    root = make_rootfs(tmp_path)
    os.symlink("/", root / "up")
    fd = open_in_root(root, "/up/../../etc/passwd", use_openat2=use_openat2)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(root / "etc" / "passwd"))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_in_root(root, "/nope/passwd", use_openat2=use_openat2)
