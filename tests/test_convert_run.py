"""A converted image pulls, unpacks and runs with imgpipe, with the original's rootfs.

Through the command line, as a CI job would: convert the fixture image in the store
(zstd; encrypted, then run with the key), export both rootfs trees with
`unpack --export`, compare them, and run the converted image with runc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from treecompare import assert_same, snapshot

pytestmark = pytest.mark.skipif(
    __import__("os").geteuid() != 0, reason="running containers needs root (CI runs as root)"
)


def ok(out: object) -> object:
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    return out


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def test_zstd_conversion_unpacks_to_the_same_tree_and_runs(
    fixture_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'layered'}:layered", root=root))
    ok(run_cli("convert", "--zstd", "local:layered", "local:layered-zstd-converted", root=root))
    info = ok(run_cli("inspect", "--json", "layered-zstd-converted", root=root))
    assert "tar+zstd" in info.stdout  # type: ignore[attr-defined]

    ok(run_cli("unpack", "layered", "--export", str(tmp_path / "a"), root=root))
    ok(run_cli("unpack", "layered-zstd-converted", "--export", str(tmp_path / "b"), root=root))
    assert_same(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))

    out = ok(
        run_cli("run", "--rm", "layered-zstd-converted", "echo", "converted and running", root=root)
    )
    assert out.stdout.strip() == "converted and running"  # type: ignore[attr-defined]


def test_encrypted_conversion_runs_only_with_the_key(
    fixture_dir: Path, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    priv, pub = keypair
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    ok(run_cli("encrypt", "--recipient", f"jwe:{pub}", "local:busybox", "local:bb-enc", root=root))
    refused = run_cli("run", "--rm", "bb-enc", "true", root=root)
    assert refused.returncode == 12, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("imgpipe: error: ")
    # the refused run left no container behind to hold its name
    ps = ok(run_cli("ps", "--json", root=root))
    assert ps.stdout.strip() == "[]"  # type: ignore[attr-defined]
    out = ok(
        run_cli(
            "run", "--rm", "--name", "enc1", "--decrypt-key", str(priv), "bb-enc",
            "echo", "decrypted", root=root,
        )
    )  # fmt: skip
    assert out.stdout.strip() == "decrypted"  # type: ignore[attr-defined]
    # unpacked once with the key is no licence to run without it (imgcrypt's check)
    again = run_cli("run", "--rm", "bb-enc", "true", root=root)
    assert again.returncode == 12, again.stderr
    assert "encrypted: pass --decrypt-key" in again.stderr


def test_report_path_is_checked_before_anything_is_written(
    fixture_dir: Path, tmp_path: Path
) -> None:
    """An unwritable --report is a bad argument found up front: no tag written, and a
    failing conversion keeps its own exit code."""
    out = run_cli(
        "convert", "--zstd", f"oci:{fixture_dir / 'layered'}:layered",
        f"oci:{tmp_path / 'out'}:zz", "--report", str(tmp_path / "missing" / "r.json"),
        root=tmp_path / "root",
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert not (tmp_path / "out" / "index.json").exists()
    report = tmp_path / "r.json"
    bad = run_cli(
        "convert", "--zstd", f"oci:{tmp_path / 'nosuch'}:x", f"oci:{tmp_path / 'o2'}:x",
        "--report", str(report), root=tmp_path / "root",
    )  # fmt: skip
    assert bad.returncode == 5, bad.stderr
    import json

    assert json.loads(report.read_text())["exitCode"] == 5


def test_cli_refuses_contradictory_or_bad_options(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    threads = run_cli("convert", "--zstd-threads", "4", "local:busybox", "local:x", root=root)
    assert threads.returncode == 2
    assert (
        run_cli("run", "--rm", "--stop-timeout", "-1", "busybox", "true", root=root).returncode == 3
    )
    assert (
        run_cli("run", "--rm", "--pids-limit", "-5", "busybox", "true", root=root).returncode == 3
    )
    envf = tmp_path / "env"
    envf.write_bytes(b"A=\xff\xfe\n")
    assert (
        run_cli("run", "--rm", "--env-file", str(envf), "busybox", "true", root=root).returncode
        == 3
    )
    other = "linux/arm64" if __import__("platform").machine() == "x86_64" else "linux/amd64"
    wrong = run_cli("run", "--rm", "--platform", other, "busybox", "true", root=root)
    assert wrong.returncode == 5, wrong.stderr
