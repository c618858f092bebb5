"""The processor registry: chains by media type, lookup order, entry points, config."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.config import config_dir, load_processors
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import InvalidArgument, MalformedDocument, Unauthorized, Unsupported
from imgpipe.formats.mediatype import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_FOREIGN_LAYER_GZIP,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_GZIP,
    OCI_LAYER_NONDIST_ZSTD,
    OCI_LAYER_ZSTD,
    MediaType,
)
from imgpipe.processors import (
    ExternalProcessor,
    ExternalProcessorConfig,
    NoProcessor,
    ProcessorParams,
    ProcessorRegistry,
)
from imgpipe.processors.base import ChunkReader

REPO = Path(__file__).resolve().parent.parent
ENC = "+encrypted"


def names(chain) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.name for p in chain]


@pytest.fixture
def reg() -> ProcessorRegistry:
    return ProcessorRegistry(entry_points=False)


ALL_LAYER_TYPES = [
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_GZIP,
    OCI_LAYER_NONDIST_ZSTD,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER,
    DOCKER_FOREIGN_LAYER_GZIP,
]


@pytest.mark.parametrize("mt", ALL_LAYER_TYPES)
def test_every_layer_type_decodes_to_the_oci_tar(reg: ProcessorRegistry, mt: str) -> None:
    assert names(reg.decoder_chain(mt)) == ["decompress"]
    # decryption gives the inner type; a tar is the end of the chain
    after = [] if mt == OCI_LAYER else ["decompress"]
    assert names(reg.decoder_chain(mt + ENC)) == ["ocicrypt-decrypt", *after]
    # parameters and case do not change the answer
    assert names(reg.decoder_chain(mt.upper() + "; foo=bar")) == ["decompress"]


@pytest.mark.parametrize(
    "mt",
    [OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar+lz4", "text/plain", ""],
)
def test_a_miss_names_the_media_type(reg: ProcessorRegistry, mt: str) -> None:
    with pytest.raises(NoProcessor) as info:
        reg.decoder_chain(mt)
    assert isinstance(info.value, Unsupported)
    assert info.value.media_type == mt and f"media type {mt}" in str(info.value)


@pytest.mark.parametrize(
    ("src", "dst", "chain"),
    [
        (OCI_LAYER, OCI_LAYER_GZIP, ["gzip-compress"]),
        (OCI_LAYER, OCI_LAYER_ZSTD, ["zstd-compress"]),
        (OCI_LAYER, OCI_LAYER_ZSTD + ENC, ["zstd-compress", "ocicrypt-encrypt"]),
        (OCI_LAYER, OCI_LAYER_GZIP + ENC, ["gzip-compress", "ocicrypt-encrypt"]),
        (OCI_LAYER_GZIP, OCI_LAYER_GZIP + ENC, ["ocicrypt-encrypt"]),
        (DOCKER_LAYER, DOCKER_LAYER_GZIP, ["gzip-compress"]),
        (OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_ZSTD, ["zstd-compress"]),
        (OCI_LAYER, OCI_LAYER, []),
    ],
)
def test_encoder_chains(reg: ProcessorRegistry, src: str, dst: str, chain: list[str]) -> None:
    assert names(reg.encoder_chain(src, dst)) == chain


@pytest.mark.parametrize(
    ("src", "dst"),
    [(OCI_LAYER_GZIP, OCI_LAYER_ZSTD), (OCI_LAYER, DOCKER_LAYER_GZIP), (OCI_LAYER, OCI_CONFIG)],
)
def test_impossible_encodings_are_no_processor(reg: ProcessorRegistry, src: str, dst: str) -> None:
    with pytest.raises(NoProcessor):
        reg.encoder_chain(src, dst)


class Identity:
    """A processor from one type to another that copies bytes (for lookup tests)."""

    direction = "decode"

    def __init__(self, name: str, src: str, dst: str) -> None:
        self.name, self._src, self._dst = name, src, dst

    def accepts(self, mt: MediaType) -> bool:
        return mt.base == self._src

    def output_type(self, mt: MediaType) -> MediaType:
        return MediaType(self._dst)

    def open(self, stream, desc, params):  # type: ignore[no-untyped-def]
        class Copy(ChunkReader):
            def _next_chunk(self) -> bytes:
                return stream.read(1 << 20)  # type: ignore[no-any-return]

            def _close_inner(self) -> None:
                stream.close()

        return Copy()


def test_configured_processors_come_first() -> None:
    mine = Identity("mine", OCI_LAYER_GZIP, OCI_LAYER)
    reg = ProcessorRegistry([mine], entry_points=False)
    assert names(reg.decoder_chain(OCI_LAYER_GZIP)) == ["mine"]
    assert names(reg.decoder_chain(OCI_LAYER_ZSTD)) == ["decompress"]


def test_loops_and_long_chains_are_refused() -> None:
    a, b = "application/x-a", "application/x-b"
    loop = ProcessorRegistry(
        [Identity("ab", a, b), Identity("ba", b, a)], entry_points=False, builtins=[]
    )
    with pytest.raises(NoProcessor, match="loop"):
        loop.decoder_chain(a)
    steps = [Identity(f"s{i}", f"application/x-{i}", f"application/x-{i + 1}") for i in range(20)]
    long = ProcessorRegistry(steps, entry_points=False, builtins=[])
    with pytest.raises(NoProcessor, match="no tar after"):
        long.decoder_chain("application/x-0")


def test_open_chain_passes_each_step_its_media_type(reg: ProcessorRegistry) -> None:
    seen: list[str] = []

    class Spy(Identity):
        def open(self, stream, desc, params):  # type: ignore[no-untyped-def]
            seen.append(desc.media_type)
            return super().open(stream, desc, params)

    x = "application/x-custom"
    custom = ProcessorRegistry([Spy("spy", x, OCI_LAYER_GZIP)], entry_points=False)
    import gzip

    blob = gzip.compress(b"tar bytes", mtime=0)
    desc = Descriptor(MediaType(x), Digest.from_bytes(blob), len(blob))
    with custom.open_decoded(io.BytesIO(blob), desc) as out:
        assert out.read() == b"tar bytes"
        assert out.media_type == OCI_LAYER
    assert seen == [x]
    del reg


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=300_000), size=st.sampled_from([1, 100, 65536, 1 << 20]))
def test_encode_then_decode_through_the_registry(data: bytes, size: int) -> None:
    reg = ProcessorRegistry(entry_points=False)
    desc = Descriptor(MediaType(OCI_LAYER), Digest.from_bytes(data), len(data))
    for target in (OCI_LAYER_GZIP, OCI_LAYER_ZSTD):
        enc = reg.open_encoded(io.BytesIO(data), desc, target)
        blob = b"".join(iter(lambda e=enc: e.read(size), b""))  # type: ignore[misc]
        assert enc.annotations() == {}
        enc_desc = Descriptor(MediaType(target), Digest.from_bytes(blob), len(blob))
        with reg.open_decoded(io.BytesIO(blob), enc_desc) as dec:
            assert b"".join(iter(lambda d=dec: d.read(size), b"")) == data  # type: ignore[misc]


# ---------------------------------------------------------------- ocicrypt through the chain


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = tmp_path / f"{name}.pem"
    pub = tmp_path / f"{name}.pub.pem"
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


def test_tar_to_zstd_encrypted_and_back(tmp_path: Path, reg: ProcessorRegistry) -> None:
    from imgpipe.processors.ocicrypt import load_private_key, load_recipient

    priv, pub = _keypair(tmp_path, "a")
    _, other_pub = _keypair(tmp_path, "b")
    data = os.urandom(300_000) * 4
    desc = Descriptor(MediaType(OCI_LAYER), Digest.from_bytes(data), len(data))
    params = ProcessorParams(recipients=[load_recipient(f"jwe:{pub}")])
    target = OCI_LAYER_ZSTD + ENC
    with reg.open_encoded(io.BytesIO(data), desc, target, params) as enc:
        blob = enc.read()
        annotations = dict(enc.annotations())
    assert "org.opencontainers.image.enc.keys.jwe" in annotations
    assert "org.opencontainers.image.enc.pubopts" in annotations
    enc_desc = Descriptor(
        MediaType(target), Digest.from_bytes(blob), len(blob), annotations=annotations
    )
    keys = ProcessorParams(decrypt_keys=[load_private_key(str(priv))])
    with reg.open_decoded(io.BytesIO(blob), enc_desc, keys) as dec:
        assert dec.read() == data

    # no key, or the wrong one: refused before any byte
    for wrong in ((), (load_private_key(str(_keypair(tmp_path, "c")[0])),)):
        with pytest.raises(Unauthorized):
            reg.open_decoded(io.BytesIO(blob), enc_desc, ProcessorParams(decrypt_keys=wrong))
    del other_pub


def test_encrypting_without_recipients_is_invalid(reg: ProcessorRegistry) -> None:
    desc = Descriptor(MediaType(OCI_LAYER), Digest.from_bytes(b""), 0)
    with pytest.raises(InvalidArgument, match="recipients"):
        reg.open_encoded(io.BytesIO(b""), desc, OCI_LAYER + ENC)


# ---------------------------------------------------------------- entry points


def test_entry_point_processors_load_lazily(tmp_path: Path) -> None:
    """A real installed distribution (a dist-info on sys.path) providing a processor."""
    site = tmp_path / "site"
    dist = site / "imgpipe_rot13-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imgpipe-rot13\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[imgpipe.processors]\nrot = imgpipe_rot13:Rot\n")
    (site / "imgpipe_rot13.py").write_text(
        textwrap.dedent(
            """
            import codecs
            from imgpipe.formats.mediatype import MediaType
            LOADED = []
            class Rot:
                name = "rot13"
                direction = "decode"
                def __init__(self):
                    LOADED.append(self)
                def accepts(self, mt):
                    return mt.base == "application/vnd.example.layer.v1.tar+rot13"
                def output_type(self, mt):
                    return MediaType("application/vnd.oci.image.layer.v1.tar")
                def open(self, stream, desc, params):
                    raise NotImplementedError
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        from imgpipe.processors import ProcessorRegistry
        reg = ProcessorRegistry()
        import imgpipe_rot13
        assert not imgpipe_rot13.LOADED, "loaded before the first lookup"
        chain = reg.decoder_chain("application/vnd.example.layer.v1.tar+rot13")
        print(",".join(p.name for p in chain), len(imgpipe_rot13.LOADED))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["rot13", "1"]


# ---------------------------------------------------------------- config


def test_config_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGPIPE_CONFIG", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert config_dir() == tmp_path / "a"
    monkeypatch.delenv("IMGPIPE_CONFIG")
    # like the state root: the system directory for the superuser, XDG otherwise
    expected = Path("/etc/imgpipe") if os.geteuid() == 0 else tmp_path / "x" / "imgpipe"
    assert config_dir() == expected


def test_processors_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(
            """
            [[processors]]
            id = "pigz"
            accepts = ["application/vnd.oci.image.layer.v1.tar+gzip"]
            returns = "application/vnd.oci.image.layer.v1.tar"
            path = "unpigz"
            args = ["-d", "-c"]
            env = ["A=1"]
            """
        )
    )
    [p] = load_processors(cfg)
    assert isinstance(p, ExternalProcessor)
    assert p.config == ExternalProcessorConfig(
        id="pigz",
        accepts=(OCI_LAYER_GZIP,),
        returns=OCI_LAYER,
        path="unpigz",
        args=("-d", "-c"),
        env=("A=1",),
    )
    assert load_processors(tmp_path / "missing.toml") == []


@pytest.mark.parametrize(
    "body",
    [
        "processors = 3",
        "[[processors]]\nid = 'x'\n",
        "[[processors]]\nid='x'\naccepts=[]\nreturns='r'\npath='p'\n",
        "[[processors]]\nid='x'\naccepts=['a']\nreturns='r'\npath='p'\nenv=['NOEQUALS']\n",
        "[[processors]]\nid='x'\naccepts=['a']\nreturns='r'\npath='p'\ncolour='blue'\n",
        "[[processors]]\nid='x'\naccepts=['a']\nreturns='r'\npath='p'\n" * 2,
        "not = [toml",
    ],
)
def test_bad_config_is_malformed(tmp_path: Path, body: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(body)
    with pytest.raises(MalformedDocument, match=str(cfg)):
        load_processors(cfg)
