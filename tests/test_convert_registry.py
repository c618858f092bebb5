"""imgpipe convert between registries: streaming, interop with skopeo, no root, failures.

Source images reach the registry with skopeo (a Docker schema2 image skopeo wrote from
the OCI fixture, and the OCI fixture itself), so what we convert was made by another
tool; what we write is read back by skopeo.
"""

# The fixtures imported from test_convert are parameters here: that is how pytest finds them.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from registry_fixtures import Registry
from test_convert import (  # noqa: F401 (fixtures)
    apply_image,
    diff_ids,
    keys,
    layout_opener,
    layout_root,
    manifests_of,
    original_trees,
    read_json,
    run_convert_cli,
)
from treecompare import Node, assert_same

from imgpipe.conversion import Converter, ConvertOptions, PushRejected
from imgpipe.formats.errors import DigestMismatch, Unauthorized
from imgpipe.processors.ocicrypt import load_private_key

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture(scope="module")
def seeded(registry: Registry, fixture_dir: Path) -> Registry:
    """``src/layered:oci`` (the fixture, digests kept) and ``src/layered:v2s2`` (skopeo's
    Docker schema2 conversion of it)."""
    layout = fixture_dir / "layered"
    registry.push_layout(layout, "layered", "src/layered", "oci")
    registry.push_layout(layout, "layered", "src/layered", "v2s2", docker_format=True)
    return registry


def tag_exists(registry: Registry, repo: str, tag: str) -> bool:
    status, _, _ = registry.request(
        "HEAD", f"/v2/{repo}/manifests/{tag}", scope=f"repository:{repo}:pull"
    )
    assert status in (200, 404), status
    return status == 200


def skopeo_copy(registry: Registry, *args: str) -> None:
    registry.skopeo(
        "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
        "--src-no-creds", "--dest-no-creds", *args,
    )  # fmt: skip


@pytest.fixture
def private_skopeo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., None]]:
    """skopeo run as nobody with a HOME of its own: its blob-info cache (which makes it
    reuse gzip blobs it has seen and silently skip a recompression) starts empty. As root
    skopeo would use the system-wide cache whatever HOME says."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root (CI runs as root)")
    home = Path(tempfile.mkdtemp(prefix="imgpipe-skopeo-"))
    os.chown(home, 65534, 65534)
    policy = home / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    policy.chmod(0o644)

    def run(*args: str) -> None:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "skopeo", "--policy", str(policy), *args],
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, f"skopeo {args[0]}: {proc.stderr.strip()}"

    yield run
    shutil.rmtree(home, ignore_errors=True)


def read_back(registry: Registry, repo: str, tag: str, dest: Path) -> dict[str, object]:
    """skopeo copies REPO:TAG out (digests kept); the manifest it wrote."""
    registry.copy_out(repo, tag, dest, "x")
    return manifests_of(layout_opener(dest), layout_root(dest, "x"))[0]


def test_registry_to_registry_zstd_streams_and_skopeo_reads_it(
    seeded: Registry,
    tmp_path: Path,
    original_trees: Callable[[str], dict[str, Node]],
) -> None:
    never = tmp_path / "no-root"
    with Converter(root=never) as c:
        report = c.convert(
            f"docker://{seeded.ref('src/layered', 'v2s2')}",
            seeded.ref("dst/zstd", "1"),
            ConvertOptions(compression="zstd"),
        )
    assert not never.exists()  # registry to registry needs no store
    assert seeded.manifest_digest("dst/zstd", "1") == report.destination_digest
    assert {x.action for x in report.layers} == {"converted"}
    manifest = read_back(seeded, "dst/zstd", "1", tmp_path / "out")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert {x["mediaType"] for x in manifest["layers"]} == {ZSTD}  # type: ignore[attr-defined]
    tree = apply_image(layout_opener(tmp_path / "out"), manifest, tmp_path / "tree")  # type: ignore[arg-type]
    assert_same(original_trees("layered"), tree)


def test_our_zstd_has_the_diff_ids_of_skopeos_zstd(
    seeded: Registry, tmp_path: Path, private_skopeo: Callable[..., None]
) -> None:
    src = seeded.ref("src/layered", "oci")
    private_skopeo("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                   "--dest-compress-format", "zstd", f"docker://{src}",
                   f"docker://{seeded.ref('peer/zstd', '1')}")  # fmt: skip
    with Converter() as c:
        c.convert(src, seeded.ref("ours/zstd", "1"), ConvertOptions(compression="zstd"))
    theirs = read_back(seeded, "peer/zstd", "1", tmp_path / "theirs")
    ours = read_back(seeded, "ours/zstd", "1", tmp_path / "ours")
    # skopeo really wrote zstd (it keeps gzip when it has seen the blob before)
    assert {x["mediaType"] for x in theirs["layers"]} == {ZSTD}  # type: ignore[attr-defined]
    assert {x["mediaType"] for x in ours["layers"]} == {ZSTD}  # type: ignore[attr-defined]
    ours_ids = diff_ids(layout_opener(tmp_path / "ours"), ours)  # type: ignore[arg-type]
    assert ours_ids == diff_ids(layout_opener(tmp_path / "theirs"), theirs)  # type: ignore[arg-type]
    config = read_json(layout_opener(tmp_path / "ours"), ours["config"]["digest"])  # type: ignore[index]
    assert ours_ids == config["rootfs"]["diff_ids"]


def test_encrypted_here_decrypts_with_skopeo_and_back_here(
    seeded: Registry,
    tmp_path: Path,
    keys: Path,
    original_trees: Callable[[str], dict[str, Node]],
) -> None:
    src = seeded.ref("src/layered", "oci")
    with Converter() as c:
        enc = c.convert(src, seeded.ref("enc/layered", "1"),
                        ConvertOptions(recipients=[f"jwe:{keys / 'key.pub'}"]))  # fmt: skip
        assert {x.after.media_type for x in enc.layers} == {GZIP + "+encrypted"}
        enc_ref = f"docker://{seeded.ref('enc/layered', '1')}"
        skopeo_copy(seeded, "--decryption-key", str(keys / "key.pem"),
                    enc_ref, f"oci:{tmp_path / 'plain'}:x")  # fmt: skip
        manifest = manifests_of(
            layout_opener(tmp_path / "plain"), layout_root(tmp_path / "plain", "x")
        )[0]
        assert_same(
            original_trees("layered"),
            apply_image(layout_opener(tmp_path / "plain"), manifest, tmp_path / "t"),
        )
        # and imgpipe's own decryption gives back the very blobs we started from
        dec = c.convert(seeded.ref("enc/layered", "1"), seeded.ref("dec/layered", "1"),
                        ConvertOptions(decrypt_keys=[str(keys / "key.pem")]))  # fmt: skip
    assert [x.after.digest for x in dec.layers] == [x.before.digest for x in enc.layers]
    # skopeo (with the key) reads what we encrypted straight from the registry too
    manifest = read_back(seeded, "enc/layered", "1", tmp_path / "enc")
    key = load_private_key(str(keys / "key.pem"))
    tree = apply_image(layout_opener(tmp_path / "enc"), manifest, tmp_path / "t2", keys=(key,))  # type: ignore[arg-type]
    assert_same(original_trees("layered"), tree)


def test_known_blobs_are_found_or_mounted_not_uploaded(seeded: Registry) -> None:
    src = seeded.ref("src/layered", "oci")
    zstd = ConvertOptions(compression="zstd")
    with Converter() as c:
        first = c.convert(src, seeded.ref("again/a", "1"), zstd)
        other_repo = c.convert(src, seeded.ref("again/b", "1"), zstd)
        same_repo = c.convert(src, seeded.ref("again/a", "2"), zstd)
        # layers that do not change are mounted from the source repository
        retyped = c.convert(seeded.ref("src/layered", "v2s2"), seeded.ref("again/oci", "1"),
                            ConvertOptions(oci=True))  # fmt: skip
    assert {x.action for x in first.layers} == {"converted"}
    assert {x.action for x in other_repo.layers} == {"mounted"}
    assert {x.action for x in same_repo.layers} == {"exists"}
    assert {x.action for x in retyped.layers} == {"mounted"}
    assert first.destination_digest == other_repo.destination_digest == same_repo.destination_digest
    with Converter() as fresh:  # no memory of the above: converted again, same bytes
        again = fresh.convert(src, seeded.ref("again/c", "1"), zstd)
    assert {x.action for x in again.layers} == {"converted"}
    assert again.destination_digest == first.destination_digest


def _system_python() -> str:
    """A Python the nobody user can run (the venv's interpreter may live under /root)."""
    exe = "/usr/bin/python3"
    if not os.path.exists(exe):
        pytest.fail(
            "the non-root test needs /usr/bin/python3: apt-get install python3", pytrace=False
        )
    version = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if version != str(sys.version_info[:2]):
        pytest.fail(f"/usr/bin/python3 is {version}, the venv {sys.version_info[:2]}: the "
                    "non-root test runs the venv's packages with it", pytrace=False)  # fmt: skip
    return exe


def test_registry_to_registry_as_nobody(seeded: Registry) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root (CI runs as root)")
    # a HOME and root nobody can read but not write; the pytest directories above it
    # are root's own (0700), so let nobody through them
    locked = Path(tempfile.mkdtemp(prefix="imgpipe-nobody-"))
    locked.chmod(0o755)
    assert stat.S_IMODE(locked.stat().st_mode) == 0o755
    site = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(locked / "home"),
        "IMGPIPE_ROOT": str(locked / "root"),
        "XDG_CONFIG_HOME": str(locked / "config"),
        "XDG_DATA_HOME": str(locked / "data"),
    }
    proc = run_convert_cli(
        "--quiet", "convert", "--zstd",
        f"docker://{seeded.ref('src/layered', 'oci')}", seeded.ref("nobody/zstd", "1"),
        python=_system_python(),
        prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        env=env,
        preamble=f"import site; site.addsitedir({site!r})\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == seeded.manifest_digest("nobody/zstd", "1")
    assert os.listdir(locked) == []  # nothing written: no root, no config, no cache
    shutil.rmtree(locked)


# -- failures: clear error, its own exit code, no tag ---------------------------------------------


def test_corrupt_source_layer_is_refused_before_any_tag(
    seeded: Registry, fault_proxy: Callable[[Registry], FaultProxy], tmp_path: Path
) -> None:
    proxy = fault_proxy(seeded)
    manifest = json.loads(seeded.manifest("src/layered", "oci"))
    proxy.corrupt(f"/blobs/{manifest['layers'][2]['digest']}", offset=100)
    with Converter() as c, pytest.raises(DigestMismatch, match=manifest["layers"][2]["digest"]):
        c.convert(proxy.ref("src/layered", "oci"), seeded.ref("bad/corrupt", "1"),
                  ConvertOptions(compression="zstd"))  # fmt: skip
    assert not tag_exists(seeded, "bad/corrupt", "1")
    proc = run_convert_cli("--quiet", "convert", "--zstd", proxy.ref("src/layered", "oci"),
                           seeded.ref("bad/corrupt", "2"), root=tmp_path / "r")  # fmt: skip
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.startswith("imgpipe: error:") and proc.stderr.count("\n") == 1
    assert not tag_exists(seeded, "bad/corrupt", "2")


def test_destination_failing_uploads_is_push_rejected(
    seeded: Registry, fault_proxy: Callable[[Registry], FaultProxy], tmp_path: Path
) -> None:
    proxy = fault_proxy(seeded)
    proxy.fail(r"/blobs/uploads/", status=500, times=1000, method="PATCH")
    with Converter() as c, pytest.raises(PushRejected, match="refused the push"):
        c.convert(seeded.ref("src/layered", "oci"), proxy.ref("bad/upload", "1"),
                  ConvertOptions(compression="zstd"))  # fmt: skip
    assert proxy.log(method="PATCH")  # it did try
    assert not tag_exists(seeded, "bad/upload", "1")
    proc = run_convert_cli("--quiet", "convert", "--zstd", seeded.ref("src/layered", "oci"),
                           proxy.ref("bad/upload", "2"), root=tmp_path / "r")  # fmt: skip
    assert proc.returncode == 13, proc.stderr
    assert "refused the push" in proc.stderr and proc.stderr.count("\n") == 1
    assert not tag_exists(seeded, "bad/upload", "2")


def test_destination_without_credentials_is_unauthorized(
    seeded: Registry, registry_token: Registry, tmp_path: Path
) -> None:
    dst = registry_token.ref("bad/auth", "1")
    with Converter() as c, pytest.raises(Unauthorized):
        c.convert(seeded.ref("src/layered", "oci"), dst, ConvertOptions(compression="zstd"))
    empty = tmp_path / "auth.json"
    empty.write_text("{}")
    proc = run_convert_cli("--quiet", "convert", "--zstd", "--auth-file", empty,
                           seeded.ref("src/layered", "oci"), dst, root=tmp_path / "r")  # fmt: skip
    assert proc.returncode == 12, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not tag_exists(registry_token, "bad/auth", "1")


def test_missing_decryption_key_between_registries(
    seeded: Registry, keys: Path, tmp_path: Path
) -> None:
    with Converter() as c:
        c.convert(seeded.ref("src/layered", "oci"), seeded.ref("enc/nokey", "1"),
                  ConvertOptions(recipients=[f"jwe:{keys / 'key.pub'}"]))  # fmt: skip
    proc = run_convert_cli("--quiet", "decrypt", "--key", keys / "other.pem",
                           seeded.ref("enc/nokey", "1"), seeded.ref("dec/nokey", "1"),
                           root=tmp_path / "r")  # fmt: skip
    assert proc.returncode == 12, proc.stderr
    assert "decryption key" in proc.stderr or "opens" in proc.stderr
    assert not tag_exists(seeded, "dec/nokey", "1")


def test_a_stage_before_write_reads_converted_layers_back_from_the_registry(
    seeded: Registry, tmp_path: Path
) -> None:
    """MapLayers hands on model Layers of the destination: a user stage between it and
    Write reads them back (verified) while no tag names the image; still no root."""
    import hashlib

    from imgpipe.conversion import Mapped
    from imgpipe.pipeline import Context

    tagged: list[bool] = []
    read: list[tuple[str, str]] = []

    class ReadBack:
        name = "read-back"

        def run(self, item: Mapped, ctx: Context) -> Mapped:
            tagged.append(tag_exists(seeded, "dst/readback", "1"))
            for result in item.results.values():
                layer = result.layer
                if layer.media_type == ZSTD:
                    with layer.open_uncompressed() as tar:
                        read.append((hashlib.sha256(tar.read()).hexdigest(), str(layer.diff_id())))
            return item

    never = tmp_path / "no-root"
    with Converter(root=never) as c:
        pipeline = c.pipeline(ConvertOptions(compression="zstd"))
        report = c.run_pipeline(
            pipeline.insert_after("map-layers", ReadBack()),
            c.request(seeded.ref("src/layered", "oci"), seeded.ref("dst/readback", "1")),
        )
    assert not never.exists()
    assert tagged == [False]
    assert len(read) == len(report.layers) > 0
    assert all(f"sha256:{h}" == d for h, d in read)
    assert tag_exists(seeded, "dst/readback", "1")
