"""The OCI runtime spec: containerd's defaults, image config semantics, CLI options (pure)."""

from __future__ import annotations

import pytest

from imgpipe.errors import InvalidArgument
from imgpipe.formats.config import ContainerConfig
from imgpipe.task.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH_ENV,
    ContainerSettings,
    Volume,
    build_spec,
    default_spec,
    merge_env,
    parse_env_file,
    parse_volume,
    resolve_args,
)
from imgpipe.task.user import MAX_ID, ResolvedUser, parse_user

ROOT = ResolvedUser(0, 0, (0,))

# (entrypoint, cmd, args, --entrypoint, expected)
ARGS_TABLE = [
    (None, ["/bin/sh"], [], None, ["/bin/sh"]),
    (None, ["/bin/sh"], ["echo", "hi"], None, ["echo", "hi"]),
    (["/ep"], ["c1", "c2"], [], None, ["/ep", "c1", "c2"]),
    (["/ep"], ["c1"], ["a"], None, ["/ep", "a"]),
    (["/ep"], None, [], None, ["/ep"]),
    (["/ep"], [], [], None, ["/ep"]),
    # --entrypoint replaces Entrypoint and drops the image's Cmd (Docker)
    (["/ep"], ["c1"], [], ["/other"], ["/other"]),
    (["/ep"], ["c1"], ["x"], ["/other"], ["/other", "x"]),
    (None, ["c1"], ["x", "y"], ["/other"], ["/other", "x", "y"]),
    # --entrypoint "" clears it: the args alone run
    (["/ep"], ["c1"], ["echo", "z"], [], ["echo", "z"]),
]


@pytest.mark.parametrize(("entrypoint", "cmd", "args", "override", "expected"), ARGS_TABLE)
def test_resolve_args(entrypoint, cmd, args, override, expected) -> None:
    assert resolve_args(entrypoint, cmd, args, entrypoint_override=override) == expected


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "args", "override"),
    [(None, None, [], None), (None, [], [], None), (["/ep"], ["c"], [], [])],
)
def test_nothing_to_run(entrypoint, cmd, args, override) -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        resolve_args(entrypoint, cmd, args, entrypoint_override=override)


def test_env_merge_order_and_default_path() -> None:
    image = ["PATH=/img/bin", "A=1", "B=2"]
    assert merge_env(image, ["B=3", "C=4", "B=5"]) == ["PATH=/img/bin", "A=1", "B=5", "C=4"]
    # no Env in the image: containerd's default PATH
    assert merge_env([], ["X=1"]) == [DEFAULT_PATH_ENV, "X=1"]
    # an image that sets Env without PATH keeps it that way (containerd does)
    assert merge_env(["A=1"], []) == ["A=1"]
    # a bare name removes the variable; values may hold '='
    assert merge_env(image, ["A", "D=x=y"]) == ["PATH=/img/bin", "B=2", "D=x=y"]
    with pytest.raises(InvalidArgument):
        merge_env(image, ["=oops"])


def test_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("UNSET_THING", raising=False)
    text = "# comment\n\nA=1\n  B=two words\nFROM_HOST\nUNSET_THING\nC=\n"
    assert parse_env_file(text) == ["A=1", "B=two words", "FROM_HOST=h", "C="]
    with pytest.raises(InvalidArgument, match="line 1"):
        parse_env_file("=x\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/a:/b", Volume("/a", "/b", False)),
        ("/a/:/b/c/", Volume("/a", "/b/c", False)),
        ("/a:/b:ro", Volume("/a", "/b", True)),
        ("/a:/b:rw", Volume("/a", "/b", False)),
    ],
)
def test_parse_volume(text: str, expected: Volume) -> None:
    assert parse_volume(text) == expected


@pytest.mark.parametrize("text", ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a:/b:ro:x", ""])
def test_parse_volume_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_volume(text)


# USER strings: (text, expected (user, group)) or an error
USER_TABLE = [
    ("root", ("root", None)),
    ("0", (0, None)),
    ("1000", (1000, None)),
    ("app:staff", ("app", "staff")),
    ("1000:1000", (1000, 1000)),
    ("app:50", ("app", 50)),
    ("50:staff", (50, "staff")),
    (str(MAX_ID), (MAX_ID, None)),
    (f"{MAX_ID}:{MAX_ID}", (MAX_ID, MAX_ID)),
]
USER_ERRORS = [
    str(MAX_ID + 1),  # 2147483648: runc's limit
    "4294967296",  # wraps to 0 (root) as uint32: CVE-2024-40635
    "99999999999999999999999",
    "-1",
    "0:-1",
    f"0:{MAX_ID + 1}",
    "1:4294967296",
    "a:b:c",
    ":",
    "app:",
    ":grp",
]


@pytest.mark.parametrize(("text", "expected"), USER_TABLE)
def test_parse_user(text: str, expected: tuple[object, object]) -> None:
    assert parse_user(text) == expected


@pytest.mark.parametrize("text", USER_ERRORS)
def test_parse_user_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_user(text)


def test_default_spec_is_containerds() -> None:
    spec = default_spec("c1")
    proc = spec["process"]
    assert proc["noNewPrivileges"] is True
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    for kind in ("bounding", "permitted", "effective"):
        assert proc["capabilities"][kind] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    assert "CAP_NET_RAW" not in DEFAULT_CAPABILITIES  # dropped in containerd 2.0
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert types == ["pid", "ipc", "uts", "mount", "network"]
    dests = [m["destination"] for m in spec["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"):
        assert d in dests
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_mount["options"]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]
    assert spec["linux"]["cgroupsPath"] == "/imgpipe/c1"
    assert spec["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert spec["root"] == {"path": "rootfs"}
    # fresh objects each call: a caller's edit does not leak into the next spec
    spec["mounts"].clear()
    assert default_spec("c2")["mounts"]


def _image(**kw: object) -> ContainerConfig:
    return ContainerConfig(**kw)  # type: ignore[arg-type]


def test_build_spec_applies_image_config() -> None:
    image = _image(
        env=("PATH=/x", "A=1"),
        entrypoint=("/ep",),
        cmd=("c",),
        working_dir="/srv",
    )
    spec = build_spec("web", image, ContainerSettings(env=("A=2",)), ResolvedUser(5, 6, (6, 7)))
    proc = spec["process"]
    assert proc["args"] == ["/ep", "c"]
    assert proc["env"] == ["PATH=/x", "A=2"]
    assert proc["cwd"] == "/srv"
    assert proc["user"] == {"uid": 5, "gid": 6, "additionalGids": [6, 7]}
    assert spec["hostname"] == "web"
    assert "terminal" not in proc
    assert "readonly" not in spec["root"]


def test_build_spec_options() -> None:
    settings = ContainerSettings(
        args=("sh",),
        workdir="/w",
        read_only=True,
        terminal=True,
        hostname="h1",
        volumes=(Volume("/src", "/dst", True), Volume("/s2", "/d2")),
        memory=64 << 20,
        cpus=1.5,
        pids_limit=100,
    )
    spec = build_spec("c", _image(cmd=("ignored",), working_dir="/img"), settings, ROOT)
    assert spec["process"]["args"] == ["sh"]
    assert spec["process"]["cwd"] == "/w"
    assert spec["process"]["terminal"] is True
    assert "TERM=xterm" in spec["process"]["env"]
    assert spec["root"]["readonly"] is True
    assert spec["hostname"] == "h1"
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert binds == [
        {"destination": "/dst", "type": "bind", "source": "/src", "options": ["rbind", "ro"]},
        {"destination": "/d2", "type": "bind", "source": "/s2", "options": ["rbind", "rw"]},
    ]
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20}
    assert res["cpu"] == {"quota": 150_000, "period": 100_000}
    assert res["pids"] == {"limit": 100}


def test_net_host_drops_the_network_namespace() -> None:
    spec = build_spec("c", _image(cmd=("sh",)), ContainerSettings(net="host"), ROOT)
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert "network" not in types and "pid" in types
    assert any(e.startswith("HOSTNAME=") for e in spec["process"]["env"])
    none = build_spec("c", _image(cmd=("sh",)), ContainerSettings(net="none"), ROOT)
    assert "network" in [n["type"] for n in none["linux"]["namespaces"]]


@pytest.mark.parametrize(
    "kw",
    [
        {"net": "bridge"},
        {"memory": 0},
        {"cpus": 0.0},
        {"pids_limit": 0},
        {"workdir": "relative"},
    ],
)
def test_settings_validation(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        ContainerSettings(**kw)  # type: ignore[arg-type]
