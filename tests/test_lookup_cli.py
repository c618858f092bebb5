"""Issue 12's rows for the verbs' behaviour, each through the `imgpipe` command against the
real registry: push REF without DEST, inspect of transports (as skopeo inspect) and by
digest or ID prefix, rmi of several names, the mount message, both connection attempts
named, a missing repository told from a missing tag, login to a registry without auth,
and an encrypted image run without a key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from registry_fixtures import Registry, free_port

from imgpipe import Store
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.mediatype import OCI_MANIFEST

BUSYBOX = "docker.io/library/busybox:latest"


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one error line (the last line of stderr), after checking the exit code."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert [x for x in lines if x.startswith("imgpipe: error: ")] == lines[-1:], proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def seeded(registry: Registry, fixture_dir: Path) -> Registry:
    """The open registry with busybox at ``lookup/busybox:busybox`` and the two-platform
    index at ``lookup/multi:1`` (skopeo puts them there: not ourselves)."""
    registry.push_layout(fixture_dir / "busybox", "busybox", "lookup/busybox", "busybox")
    registry.skopeo(
        "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
        "--dest-no-creds", f"oci:{fixture_dir / 'busybox-multiarch'}:busybox-multiarch",
        f"docker://{registry.ref('lookup/multi', '1')}",
    )  # fmt: skip
    return registry


@pytest.fixture
def busybox_root(fixture_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    return root


def _store_is_empty(root: Path) -> bool:
    listed = json.loads(ok(run_cli("content", "ls", "--json", root=root)))
    images = json.loads(ok(run_cli("images", "--json", root=root)))
    return listed == [] and images == []


# -- push REF --------------------------------------------------------------------------------


def test_push_without_dest_goes_where_the_name_points(seeded: Registry, busybox_root: Path) -> None:
    ref = seeded.ref("lookup/pushed", "2")
    ok(run_cli("tag", "busybox", ref, root=busybox_root))
    out = ok(run_cli("push", ref, root=busybox_root)).split()
    assert out[0] == ref
    assert seeded.manifest_digest("lookup/pushed", "2") == out[1]


# -- inspect of a transport, nothing stored -------------------------------------------------


def test_inspect_a_registry_image_like_skopeo(seeded: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ref = seeded.ref("lookup/busybox", "busybox")
    info = json.loads(ok(run_cli("inspect", "--json", f"docker://{ref}", root=root)))
    assert info["name"] == f"docker://{ref}"
    assert info["digest"] == seeded.manifest_digest("lookup/busybox", "busybox")
    (m,) = info["manifests"]
    assert m["cmd"] == ["/bin/sh"] and len(m["layers"]) == len(m["diffIDs"]) == 1
    # --raw: the manifest bytes as the registry serves them
    raw = subprocess.run(
        [*_cli(root), "inspect", "--raw", f"docker://{ref}"], capture_output=True, check=True
    ).stdout
    assert raw == seeded.manifest("lookup/busybox", "busybox")
    # --config --raw: the config blob's bytes; --config: the same JSON, indented
    config_digest = json.loads(raw)["config"]["digest"]
    cfg = subprocess.run(
        [*_cli(root), "inspect", "--config", "--raw", f"docker://{ref}"],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(cfg).hexdigest() == config_digest
    pretty = ok(run_cli("inspect", "--config", f"docker://{ref}", root=root))
    assert json.loads(pretty) == json.loads(cfg) and "\n  " in pretty
    text = ok(run_cli("inspect", f"docker://{ref}", root=root))
    assert f"Digest:     {info['digest']}" in text and "Layers:   1" in text
    assert _store_is_empty(root)


def _cli(root: Path) -> list[str]:
    from conftest import IMGPIPE

    return [str(IMGPIPE), "--root", str(root)]


def test_inspect_an_index_picks_the_config_by_platform(seeded: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ref = f"docker://{seeded.ref('lookup/multi', '1')}"
    info = json.loads(ok(run_cli("inspect", "--json", ref, root=root)))
    assert info["index"] == info["digest"]
    assert sorted(m["platform"] for m in info["manifests"]) == ["linux/amd64", "linux/arm64"]
    raw = json.loads(ok(run_cli("inspect", "--raw", ref, root=root)))
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    arm = json.loads(
        ok(run_cli("inspect", "--config", "--platform", "linux/arm64", ref, root=root))
    )
    assert arm["architecture"] == "arm64"
    line = error_line(
        run_cli("inspect", "--config", "--platform", "linux/s390x", ref, root=root), 5
    )
    assert "linux/amd64" in line and "linux/arm64" in line
    assert _store_is_empty(root)


def test_inspect_an_oci_layout_and_archives(
    registry: Registry, fixture_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    layout = fixture_dir / "layered"
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    info = json.loads(ok(run_cli("inspect", "--json", f"oci:{layout}:layered", root=root)))
    assert info["digest"] == digest and len(info["manifests"][0]["layers"]) == 4
    # an oci-archive written by us, read back without a store
    other = tmp_path / "other"
    ok(run_cli("pull", f"oci:{layout}:layered", root=other))
    archive = tmp_path / "layered.tar"
    ok(run_cli("push", "layered", f"oci-archive:{archive}:v1", root=other))
    info = json.loads(ok(run_cli("inspect", "--json", f"oci-archive:{archive}:v1", root=root)))
    assert info["digest"] == digest
    # a docker-archive skopeo wrote (as docker save does): same layers, same diffIDs
    busybox = f"oci:{fixture_dir / 'busybox'}:busybox"
    saved = tmp_path / "saved.tar"
    registry.skopeo("copy", "--quiet", busybox, f"docker-archive:{saved}:lookup/bb:1")
    want = json.loads(ok(run_cli("inspect", "--json", busybox, root=root)))["manifests"][0]
    info = json.loads(ok(run_cli("inspect", "--json", f"docker-archive:{saved}", root=root)))
    assert info["manifests"][0]["diffIDs"] == want["diffIDs"]
    assert _store_is_empty(root)


def test_inspect_of_a_missing_remote_image_is_not_found(seeded: Registry, tmp_path: Path) -> None:
    ref = f"docker://{seeded.ref('lookup/busybox', 'nope')}"
    assert "tag not found" in error_line(run_cli("inspect", ref, root=tmp_path / "r"), 5)


# -- inspect and rmi by digest or ID prefix -------------------------------------------------


def test_inspect_and_rmi_by_digest_and_id_prefix(busybox_root: Path) -> None:
    root = busybox_root
    digest = json.loads(ok(run_cli("images", "--json", root=root)))[0]["digest"]
    hexpart = digest.removeprefix("sha256:")
    for spelled in (digest, hexpart[:12], hexpart[:4], "sha256:" + hexpart[:8]):
        info = json.loads(ok(run_cli("inspect", "--json", spelled, root=root)))
        assert (info["name"], info["digest"]) == (BUSYBOX, digest), spelled
    # too short to be an ID, and no such name
    assert error_line(run_cli("inspect", hexpart[:3], root=root), 5)
    # one image, two names: an ID names both, so rmi wants --force (as docker rmi)
    ok(run_cli("tag", "busybox", "example.com/bb:1", root=root))
    line = error_line(run_cli("rmi", hexpart[:12], root=root), 7)
    assert BUSYBOX in line and "example.com/bb:1" in line and "--force" in line
    out = ok(run_cli("rmi", "--force", hexpart[:12], root=root))
    assert f"removed {BUSYBOX}" in out and "removed example.com/bb:1" in out
    assert _store_is_empty(root)


def test_an_ambiguous_prefix_names_the_candidates(tmp_path: Path) -> None:
    """Two images whose digests share a prefix (records written through the library: a
    registry cannot be asked for digests that collide)."""
    root = tmp_path / "root"
    a, b = "abcd" + "1" * 60, "abcd" + "2" * 60
    with Store(root) as store:
        for name, encoded in (("one:1", a), ("two:1", b)):
            desc = Descriptor(OCI_MANIFEST, Digest("sha256", encoded), 100)
            store.db.put_image(f"docker.io/library/{name}", desc)
    for verb in ("inspect", "rmi"):
        line = error_line(run_cli(verb, "abcd", root=root), 3)
        assert "ambiguous" in line and "abcd11111111" in line and "abcd22222222" in line
        assert "docker.io/library/one:1" in line and "docker.io/library/two:1" in line
    assert len(json.loads(ok(run_cli("images", "--json", root=root)))) == 2
    # more digits: unique
    out = run_cli("rmi", "--no-prune", "abcd1", root=root)
    assert out.returncode == 0 and "removed docker.io/library/one:1" in out.stdout
    # a name is tried before an ID prefix: an image called abcd is found as abcd
    with Store(root) as store:
        desc = Descriptor(OCI_MANIFEST, Digest("sha256", "f" * 64), 100)
        store.db.put_image("docker.io/library/abcd:latest", desc)
    out = run_cli("rmi", "--no-prune", "abcd", root=root)
    assert out.returncode == 0 and out.stdout == "removed docker.io/library/abcd:latest\n"
    names = [i["name"] for i in json.loads(ok(run_cli("images", "--json", root=root)))]
    assert names == ["docker.io/library/two:1"]


# -- rmi of several names --------------------------------------------------------------------


def test_rmi_removes_those_that_exist_and_reports_each_missing(busybox_root: Path) -> None:
    root = busybox_root
    ok(run_cli("tag", "busybox", "kept:1", root=root))
    out = run_cli("rmi", "busybox", "nosuch", "other-missing", root=root)
    assert out.returncode == 5, out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("imgpipe: error: ") for e in errors)
    assert "library/nosuch:latest" in errors[0] and "library/other-missing:latest" in errors[1]
    assert f"removed {BUSYBOX}" in out.stdout
    names = [i["name"] for i in json.loads(ok(run_cli("images", "--json", root=root)))]
    assert names == ["docker.io/library/kept:1"]


# -- mount says what it mounted ---------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a snapshot needs root")
def test_mount_says_what_went_where(busybox_root: Path, tmp_path: Path) -> None:
    root = busybox_root
    target = tmp_path / "mnt"
    target.mkdir()
    out = ok(run_cli("mount", "--snapshotter", "native", "busybox", target, root=root))
    try:
        assert out == f"mounted busybox at {target}\n"
        assert (target / "bin").is_dir()
    finally:
        ok(run_cli("umount", target, root=root))
    mounted = json.loads(
        ok(run_cli("mount", "--json", "--snapshotter", "native", "busybox", target, root=root))
    )
    ok(run_cli("umount", target, root=root))
    keys = [s["key"] for s in json.loads(ok(run_cli("snapshots", "ls", "--json", root=root)))]
    assert mounted["event"] == "result" and mounted["key"].startswith("mount-")
    assert mounted["key"] not in keys  # umount dropped it


# -- the registry's answers, relayed --------------------------------------------------------


def test_nothing_listening_names_both_attempts(tmp_path: Path) -> None:
    port = free_port()
    line = error_line(run_cli("pull", f"127.0.0.1:{port}/a/b:c", root=tmp_path / "r"), 13)
    assert f"https://127.0.0.1:{port}/" in line and f"http://127.0.0.1:{port}/" in line
    assert line.count("connection refused") == 2


def test_missing_repository_and_missing_tag_are_told_apart(
    seeded: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    line = error_line(run_cli("pull", seeded.ref("lookup/no-such-repo", "1"), root=root), 5)
    assert "repository not found (NAME_UNKNOWN)" in line
    # distribution 2.8 says MANIFEST_UNKNOWN for both: tags/list tells them apart
    line = error_line(run_cli("pull", seeded.ref("lookup/busybox", "nope"), root=root), 5)
    assert "lookup/busybox:nope: tag not found (MANIFEST_UNKNOWN)" in line
    assert line.endswith("the repository has tags: busybox")
    missing = "sha256:" + "0" * 64
    line = error_line(run_cli("pull", f"{seeded.host}/lookup/busybox@{missing}", root=root), 5)
    assert "digest not found" in line
    assert _store_is_empty(root)


def test_login_to_a_registry_without_auth_saves_nothing(seeded: Registry, tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    proc = subprocess.run(
        [*_cli(tmp_path / "root"), "login", "-u", "someone", "--password-stdin",
         "--auth-file", str(auth), seeded.host],
        input="not-checked\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "asks for no credentials" in proc.stdout and "Login Succeeded" not in proc.stdout
    assert not auth.exists()


def test_run_of_an_encrypted_image_without_a_key_says_which_flag(
    seeded: Registry, busybox_root: Path, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ref = seeded.ref("lookup/encrypted", "1")
    ok(run_cli("encrypt", "--recipient", f"jwe:{pub}", "local:busybox", ref, root=busybox_root))
    line = error_line(run_cli("run", "--rm", ref, "true", root=tmp_path / "fresh"), 12)
    assert line.endswith("encrypted: pass --decrypt-key FILE[:PASSWORD]")
    assert "none of the given keys" not in line


@pytest.mark.parametrize(
    ("host", "port"),
    [("127.0.0.1:5001", True), ("localhost", False), ("[::1]:5000", True), ("[::1]", False)],
)
def test_has_port_decides_whether_http_retries(host: str, port: bool) -> None:
    """With a port, HTTP goes to the one HTTPS just found closed: one try, no backoff."""
    from imgpipe.remote.hosts import has_port

    assert has_port(host) is port
