"""Interop with containers/ocicrypt as skopeo runs it: both directions, one and many keys."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imgpipe.processors.ocicrypt import (
    ANNOTATION_KEYS_JWE,
    ANNOTATION_PUBOPTS,
    DecryptingReader,
    EncryptingReader,
    add_recipients,
    decrypted_media_type,
    encrypted_media_type,
    load_private_key,
    load_recipient,
)

TAG = "busybox"


class Skopeo:
    """skopeo with a private HOME/TMPDIR and an accept-everything policy."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("skopeo")
        if exe is None:
            pytest.fail("skopeo is required for the ocicrypt interop tests: apt-get install skopeo")
        self.exe = exe
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.policy = work / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.env = {**os.environ, "HOME": str(work), "TMPDIR": str(work)}

    def copy(self, src: Path, dst: Path, *flags: str, tag: str = TAG) -> None:
        proc = subprocess.run(
            [self.exe, "copy", "-q", "--policy", str(self.policy), *flags,
             f"oci:{src}:{tag}", f"oci:{dst}:{tag}"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    return Skopeo(tmp_path_factory.mktemp("skopeo-home"))


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RSA 2048 and EC P-256 key pairs; private keys as PKCS#8, which ocicrypt requires
    for EC (it does not read SEC1 ``EC PRIVATE KEY`` files)."""
    d = tmp_path_factory.mktemp("skopeo-keys")
    for name, key in (
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ec", ec.generate_private_key(ec.SECP256R1())),
    ):
        (d / f"{name}.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (d / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return d


def manifest(layout: Path, tag: str = TAG) -> tuple[dict, dict]:  # type: ignore[type-arg]
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]  # fmt: skip
    return index, json.loads(blob(layout, desc["digest"]).read_bytes())


def blob(layout: Path, digest: str) -> Path:
    alg, _, hexd = digest.partition(":")
    return layout / "blobs" / alg / hexd


def layer_digests(layout: Path, tag: str = TAG) -> list[str]:
    return [layer["digest"] for layer in manifest(layout, tag)[1]["layers"]]


def decrypt_layout_layers(layout: Path, keys, tag: str = TAG) -> list[str]:  # type: ignore[no-untyped-def]
    """Decrypt every layer of ``layout`` with imgpipe; return the plaintext digests."""
    out = []
    for layer in manifest(layout, tag)[1]["layers"]:
        assert layer["mediaType"].endswith("+encrypted")
        h = hashlib.sha256()
        with DecryptingReader(
            blob(layout, layer["digest"]).open("rb"),
            annotations=layer["annotations"],
            keys=keys,
            verify_digest=True,
        ) as r:
            while chunk := r.read(1 << 16):
                h.update(chunk)
        out.append("sha256:" + h.hexdigest())
    return out


def encrypt_layout(src: Path, dst: Path, recipients) -> None:  # type: ignore[no-untyped-def]
    """Write ``dst``: ``src`` with every layer encrypted by imgpipe (config unchanged)."""
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    index, man = manifest(dst)
    for layer in man["layers"]:
        tmp = dst / "blobs" / "tmp"
        h = hashlib.sha256()
        with blob(dst, layer["digest"]).open("rb") as f, tmp.open("wb") as out:
            enc = EncryptingReader(f, recipients=recipients, close_raw=False)
            while chunk := enc.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        digest = "sha256:" + h.hexdigest()
        tmp.replace(blob(dst, digest))
        layer.update(
            mediaType=encrypted_media_type(layer["mediaType"]),
            digest=digest,
            size=enc.size,
            annotations={**layer.get("annotations", {}), **enc.annotations()},
        )
    raw = json.dumps(man).encode()
    mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob(dst, mdigest).write_bytes(raw)
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG:
            m.update(digest=mdigest, size=len(raw))
    (dst / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def source(fixture_dir: Path) -> Path:
    return fixture_dir / TAG


# (not the uncompressed fixture: skopeo gzips a plain tar layer before encrypting it)
@pytest.mark.parametrize("name", ["busybox", "layered", "layered-zstd"])
def test_skopeo_encrypted_layer_decrypts_with_imgpipe(
    skopeo, keydir, fixture_dir, tmp_path, name
) -> None:
    src, enc = fixture_dir / name, tmp_path / "enc"
    skopeo.copy(src, enc, "--encryption-key", f"jwe:{keydir / 'rsa.pub'}", tag=name)
    _, man = manifest(enc, name)
    _, sman = manifest(src, name)
    assert [lay["mediaType"] for lay in man["layers"]] == [
        encrypted_media_type(lay["mediaType"]) for lay in sman["layers"]
    ]
    assert not set(layer_digests(enc, name)) & set(layer_digests(src, name))
    got = decrypt_layout_layers(enc, [load_private_key(str(keydir / "rsa.pem"))], name)
    assert got == layer_digests(src, name)


def test_skopeo_multi_recipient_opens_with_either_key(skopeo, keydir, source, tmp_path) -> None:
    enc = tmp_path / "enc"
    skopeo.copy(
        source, enc,
        "--encryption-key", f"jwe:{keydir / 'rsa.pub'}",
        "--encryption-key", f"jwe:{keydir / 'ec.pub'}",
    )  # fmt: skip
    for name in ("rsa", "ec"):
        key = load_private_key(str(keydir / f"{name}.pem"))
        assert decrypt_layout_layers(enc, [key]) == layer_digests(source)


@pytest.mark.parametrize("recipients", [["rsa"], ["ec"], ["rsa", "ec"]])
def test_imgpipe_encrypted_layer_decrypts_with_skopeo(
    skopeo, keydir, source, tmp_path, recipients
) -> None:
    enc = tmp_path / "enc"
    encrypt_layout(source, enc, [load_recipient(f"jwe:{keydir / n}.pub") for n in recipients])
    _, man = manifest(enc)
    for layer in man["layers"]:
        assert {ANNOTATION_KEYS_JWE, ANNOTATION_PUBOPTS} <= set(layer["annotations"])
    for name in recipients:
        dec = tmp_path / f"dec-{name}"
        skopeo.copy(enc, dec, "--decryption-key", str(keydir / f"{name}.pem"))
        assert layer_digests(dec) == layer_digests(source)
        _, dman = manifest(dec)
        assert [lay["mediaType"] for lay in dman["layers"]] == [
            decrypted_media_type(lay["mediaType"]) for lay in man["layers"]
        ]
    # and a key that is not a recipient is refused by skopeo as well
    if recipients == ["rsa"]:
        proc = subprocess.run(
            [skopeo.exe, "copy", "-q", "--policy", str(skopeo.policy),
             "--decryption-key", str(keydir / "ec.pem"),
             f"oci:{enc}:{TAG}", f"oci:{tmp_path / 'nope'}:{TAG}"],
            env=skopeo.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0


def test_recipient_added_by_imgpipe_opens_skopeo_layer(skopeo, keydir, source, tmp_path) -> None:
    enc = tmp_path / "enc"
    skopeo.copy(source, enc, "--encryption-key", f"jwe:{keydir / 'rsa.pub'}")
    index, man = manifest(enc)
    rsa_key = load_private_key(str(keydir / "rsa.pem"))
    ec_rcpt = load_recipient(f"jwe:{keydir / 'ec.pub'}")
    for layer in man["layers"]:
        layer["annotations"] = add_recipients(
            layer["annotations"], keys=[rsa_key], recipients=[ec_rcpt]
        )
    raw = json.dumps(man).encode()
    mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob(enc, mdigest).write_bytes(raw)
    index["manifests"][0].update(digest=mdigest, size=len(raw))
    (enc / "index.json").write_text(json.dumps(index))
    dec = tmp_path / "dec"
    skopeo.copy(enc, dec, "--decryption-key", str(keydir / "ec.pem"))
    assert layer_digests(dec) == layer_digests(source)
