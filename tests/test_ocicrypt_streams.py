"""ocicrypt layer encryption: round trips, the wire format, hostile input, key loading."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from imgpipe.formats import (
    Digest,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    MalformedDocument,
    NotFound,
    Unsupported,
)
from imgpipe.processors.ocicrypt import (
    ANNOTATION_KEYS_JWE,
    ANNOTATION_PUBOPTS,
    DecryptingReader,
    DecryptKey,
    EncryptingReader,
    NoDecryptionKey,
    Recipient,
    add_recipients,
    check_authorization,
    decrypted_media_type,
    encrypted_media_type,
    filter_annotations,
    load_private_key,
    load_recipient,
)

PASSWORD = "s3cret-Pa55word"


class Keys:
    """Key files for one test module: RSA 2048, EC P-256 (SEC1 and PKCS#8), encrypted RSA."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec384 = ec.generate_private_key(ec.SECP384R1())
        self.rsa_pem = self._priv(
            "rsa.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL
        )
        self.ec_pem = self._priv("ec.pem", ec_key, serialization.PrivateFormat.TraditionalOpenSSL)
        self.ec8_pem = self._priv("ec8.pem", ec_key, serialization.PrivateFormat.PKCS8)
        self.ec384_pem = self._priv("ec384.pem", ec384, serialization.PrivateFormat.PKCS8)
        self.rsa_enc_pem = d / "rsa-enc.pem"
        self.rsa_enc_pem.write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(PASSWORD.encode()),
            )
        )
        self.rsa_pub = self._pub("rsa.pub", rsa_key)
        self.ec_pub = self._pub("ec.pub", ec_key)
        self.ec384_pub = self._pub("ec384.pub", ec384)
        self.secrets = [p.read_text() for p in (self.rsa_pem, self.ec_pem, self.ec8_pem)]
        self.rsa_cert = d / "rsa.crt"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgpipe test")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(rsa_key.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(rsa_key, hashes.SHA256())
        )
        self.rsa_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _priv(self, name: str, key, fmt) -> Path:  # type: ignore[no-untyped-def]
        p = self.dir / name
        p.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        )
        return p

    def _pub(self, name: str, key) -> Path:  # type: ignore[no-untyped-def]
        p = self.dir / name
        p.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return p

    def secret_bodies(self) -> list[str]:
        """Lines of base64 key material of every private key file (none may leak)."""
        out = []
        for text in self.secrets:
            out += [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
        return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("ocicrypt-keys"))


@pytest.fixture(scope="module")
def rsa_key(keys: Keys) -> DecryptKey:
    return load_private_key(str(keys.rsa_pem))


@pytest.fixture(scope="module")
def ec_key(keys: Keys) -> DecryptKey:
    return load_private_key(str(keys.ec_pem))


@pytest.fixture(scope="module")
def rsa_rcpt(keys: Keys) -> Recipient:
    return load_recipient(f"jwe:{keys.rsa_pub}")


@pytest.fixture(scope="module")
def ec_rcpt(keys: Keys) -> Recipient:
    return load_recipient(f"jwe:{keys.ec_pub}")


def encrypt(data: bytes, recipients, **kw) -> tuple[bytes, dict[str, str]]:  # type: ignore[no-untyped-def]
    r = EncryptingReader(io.BytesIO(data), recipients=recipients, **kw)
    ct = r.read()
    assert r.read() == b""
    return ct, r.annotations()


def decrypt(ct: bytes, ann, keys, *, n: int = -1, **kw) -> bytes:  # type: ignore[no-untyped-def]
    with DecryptingReader(io.BytesIO(ct), annotations=ann, keys=keys, **kw) as r:
        if n < 0:
            return r.read()
        parts = []
        while chunk := r.read(n):
            assert len(chunk) <= n
            parts.append(chunk)
        return b"".join(parts)


def jwe_docs(ann: dict[str, str]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(base64.b64decode(e)) for e in ann[ANNOTATION_KEYS_JWE].split(",")]


def b64url_json(s: str) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


# -- round trips --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(st.just(b""), st.binary(max_size=9000)),
    chunk=st.integers(min_value=1, max_value=4096),
    read_n=st.integers(min_value=1, max_value=5000),
    enc_n=st.integers(min_value=1, max_value=5000),
)
def test_roundtrip_chunk_boundaries(rsa_key, rsa_rcpt, data, chunk, read_n, enc_n) -> None:  # noqa: PLR0917
    enc = EncryptingReader(io.BytesIO(data), recipients=[rsa_rcpt], chunk_size=chunk)
    parts = []
    while c := enc.read(enc_n):
        parts.append(c)
    ct = b"".join(parts)
    assert len(ct) == len(data) == enc.size
    if data:
        assert ct != data
    ann = enc.annotations()
    assert decrypt(ct, ann, [rsa_key], n=read_n, chunk_size=chunk) == data
    # readinto into a buffer of another size sees the same bytes
    with DecryptingReader(io.BytesIO(ct), annotations=ann, keys=[rsa_key]) as r:
        buf = bytearray(read_n)
        got = bytearray()
        while k := r.readinto(buf):
            got += buf[:k]
    assert bytes(got) == data


def test_multi_recipient_each_key_alone(rsa_key, ec_key, rsa_rcpt, ec_rcpt, keys) -> None:
    data = bytes(range(256)) * 5000
    ec384 = load_recipient(f"jwe:{keys.ec384_pub}")
    ct, ann = encrypt(data, [rsa_rcpt, ec_rcpt, ec384])
    for key in (rsa_key, ec_key, load_private_key(str(keys.ec384_pem))):
        assert decrypt(ct, ann, [key]) == data
    # a wrong key before the right one is skipped
    other = DecryptKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert decrypt(ct, ann, [other, ec_key]) == data


def test_rsa_oaep_256_recipient(rsa_key, keys) -> None:
    rcpt = load_recipient(f"jwe:{keys.rsa_pub}", algorithm="RSA-OAEP-256")
    ct, ann = encrypt(b"layer bytes", [rcpt])
    assert b64url_json(jwe_docs(ann)[0]["protected"])["alg"] == "RSA-OAEP-256"
    assert decrypt(ct, ann, [rsa_key]) == b"layer bytes"


def test_certificate_recipient(rsa_key, keys) -> None:
    ct, ann = encrypt(b"x" * 100, [load_recipient(f"jwe:{keys.rsa_cert}")])
    assert decrypt(ct, ann, [rsa_key]) == b"x" * 100


def test_add_recipients_keeps_layer_bytes(rsa_key, ec_key, rsa_rcpt, ec_rcpt) -> None:
    data = b"payload" * 1000
    ct, ann = encrypt(data, [rsa_rcpt])
    with pytest.raises(NoDecryptionKey):
        check_authorization(ann, keys=[ec_key])
    ann2 = add_recipients({**ann, "other": "kept"}, keys=[rsa_key], recipients=[ec_rcpt])
    assert ann2["other"] == "kept"
    assert ann2[ANNOTATION_PUBOPTS] == ann[ANNOTATION_PUBOPTS]
    assert ann2[ANNOTATION_KEYS_JWE].startswith(ann[ANNOTATION_KEYS_JWE] + ",")
    check_authorization(ann2, keys=[ec_key])
    assert decrypt(ct, ann2, [ec_key]) == data
    assert decrypt(ct, ann2, [rsa_key]) == data
    with pytest.raises(NoDecryptionKey):
        add_recipients(ann, keys=[ec_key], recipients=[ec_rcpt])


def test_digest_recorded_and_verified(rsa_key, rsa_rcpt) -> None:
    data = b"abc" * 3000
    ct, ann = encrypt(data, [rsa_rcpt])
    with DecryptingReader(io.BytesIO(ct), annotations=ann, keys=[rsa_key], verify_digest=True) as r:
        assert r.read() == data
        assert r.expected_digest == Digest.from_bytes(data)
    # a wrong digest handed to the encrypter is caught by verify_digest, tail withheld
    wrong = Digest.from_bytes(b"something else")
    ct, ann = encrypt(data, [rsa_rcpt], digest=wrong)
    assert decrypt(ct, ann, [rsa_key]) == data  # HMAC alone is satisfied
    r = DecryptingReader(io.BytesIO(ct), annotations=ann, keys=[rsa_key], verify_digest=True)
    with r, pytest.raises(DigestMismatch) as exc:
        r.read()
    assert exc.value.expected == str(wrong)


# -- the wire format (what ocicrypt writes) -----------------------------------------------


def test_annotation_format_single_and_multi(rsa_rcpt, ec_rcpt) -> None:
    enc = EncryptingReader(io.BytesIO(b"data"), recipients=[ec_rcpt])
    with pytest.raises(FailedPrecondition):
        enc.annotations()
    enc.read()
    enc.read()
    ann = enc.annotations()
    assert set(ann) == {ANNOTATION_KEYS_JWE, ANNOTATION_PUBOPTS}
    pub_raw = base64.b64decode(ann[ANNOTATION_PUBOPTS], validate=True)
    assert pub_raw.startswith(b'{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"')
    assert pub_raw.endswith(b'","cipheroptions":{}}')
    assert len(base64.b64decode(json.loads(pub_raw)["hmac"])) == 32
    (single,) = jwe_docs(ann)
    # go-jose flattened: alg, enc and epk all in the protected header
    assert list(single) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    prot = b64url_json(single["protected"])
    assert prot["alg"] == "ECDH-ES+A256KW" and prot["enc"] == "A256GCM" and "epk" in prot

    _, ann = encrypt(b"data", [rsa_rcpt, ec_rcpt])
    (general,) = jwe_docs(ann)
    assert list(general) == ["protected", "recipients", "iv", "ciphertext", "tag"]
    assert b64url_json(general["protected"]) == {"enc": "A256GCM"}
    algs = [r["header"]["alg"] for r in general["recipients"]]
    assert algs == ["RSA-OAEP", "ECDH-ES+A256KW"]


def test_private_options_format(rsa_key, rsa_rcpt) -> None:
    from imgpipe.processors.ocicrypt import unwrap_private_options

    _, ann = encrypt(b"hello", [rsa_rcpt])
    opts = unwrap_private_options(ann, [rsa_key])
    doc = json.loads(opts.raw)
    assert list(doc) == ["symkey", "digest", "cipheroptions"]
    assert doc["digest"] == str(Digest.from_bytes(b"hello"))
    assert len(base64.b64decode(doc["symkey"])) == 32
    assert len(base64.b64decode(doc["cipheroptions"]["nonce"])) == 16
    assert base64.b64encode(opts.symkey).decode() not in repr(opts)


def test_media_types() -> None:
    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    assert encrypted_media_type(gz) == gz + "+encrypted"
    assert decrypted_media_type(gz + "+encrypted") == gz
    assert (
        encrypted_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
        == gz + "+encrypted"
    )
    assert (
        encrypted_media_type("application/vnd.oci.image.layer.v1.tar+zstd")
        == "application/vnd.oci.image.layer.v1.tar+zstd+encrypted"
    )
    for bad in (gz + "+encrypted", "application/vnd.oci.image.config.v1+json"):
        with pytest.raises(InvalidArgument):
            encrypted_media_type(bad)
    with pytest.raises(InvalidArgument):
        decrypted_media_type(gz)
    ann = {ANNOTATION_KEYS_JWE: "x", ANNOTATION_PUBOPTS: "y", "keep": "z"}
    assert filter_annotations(ann) == {"keep": "z"}


# -- hostile input ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(rsa_rcpt) -> tuple[bytes, bytes, dict[str, str]]:
    data = bytes(i * 7 % 251 for i in range(10_000))
    ct, ann = encrypt(data, [rsa_rcpt])
    return data, ct, ann


def test_wrong_key_and_no_key(sample, ec_key, keys) -> None:
    _, ct, ann = sample
    with pytest.raises(NoDecryptionKey) as exc:
        DecryptingReader(io.BytesIO(ct), annotations=ann, keys=[ec_key])
    assert isinstance(exc.value, PermissionError)
    for body in keys.secret_bodies():
        assert body not in str(exc.value)
    with pytest.raises(NoDecryptionKey):
        DecryptingReader(io.BytesIO(ct), annotations=ann, keys=[])


def _read_collect(r: DecryptingReader, n: int, got: bytearray) -> None:
    while chunk := r.read(n):
        got += chunk


@pytest.mark.parametrize("where", [0, 4_000, 9_999])
def test_flipped_ciphertext_byte_withholds_tail(sample, rsa_key, where) -> None:
    data, ct, ann = sample
    bad = bytearray(ct)
    bad[where] ^= 0x01
    chunk = 1024
    got = bytearray()
    with DecryptingReader(
        io.BytesIO(bytes(bad)), annotations=ann, keys=[rsa_key], chunk_size=chunk
    ) as r:
        with pytest.raises(DigestMismatch):
            _read_collect(r, 100, got)
        # the failure sticks: no later read may look like a clean EOF
        with pytest.raises(DigestMismatch):
            r.read(100)
    # the last raw chunk (where the stream ended) was never released
    last = len(data) - (len(data) % chunk or chunk)
    assert len(got) <= last < len(data)


def test_truncated_ciphertext(sample, rsa_key) -> None:
    _, ct, ann = sample
    for cut in (0, 1, len(ct) // 2, len(ct) - 1):
        with pytest.raises(DigestMismatch):
            decrypt(ct[:cut], ann, [rsa_key])
    with pytest.raises(DigestMismatch):
        decrypt(ct + b"\0", ann, [rsa_key])


def test_flipped_hmac(sample, rsa_key) -> None:
    _, ct, ann = sample
    pub = json.loads(base64.b64decode(ann[ANNOTATION_PUBOPTS]))
    tag = bytearray(base64.b64decode(pub["hmac"]))
    tag[5] ^= 0x80
    pub["hmac"] = base64.b64encode(bytes(tag)).decode()
    bad = {**ann, ANNOTATION_PUBOPTS: base64.b64encode(json.dumps(pub).encode()).decode()}
    with pytest.raises(DigestMismatch):
        decrypt(ct, bad, [rsa_key])


def _pubopts(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({ANNOTATION_KEYS_JWE: None}, MalformedDocument),
        ({ANNOTATION_PUBOPTS: None}, MalformedDocument),
        ({ANNOTATION_KEYS_JWE: "not base64!"}, MalformedDocument),
        ({ANNOTATION_KEYS_JWE: base64.b64encode(b"{}").decode()}, MalformedDocument),
        ({ANNOTATION_KEYS_JWE: base64.b64encode(b"a.b.c.d.e").decode()}, MalformedDocument),
        ({ANNOTATION_PUBOPTS: "%%%"}, MalformedDocument),
        ({ANNOTATION_PUBOPTS: _pubopts([1, 2])}, MalformedDocument),
        ({ANNOTATION_PUBOPTS: _pubopts({"cipher": "AES_256_CTR_HMAC_SHA256"})}, MalformedDocument),
        (
            {ANNOTATION_PUBOPTS: _pubopts({"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": "AAAA"})},
            MalformedDocument,
        ),
        ({ANNOTATION_PUBOPTS: _pubopts({"cipher": "CHACHA", "hmac": "AAAA"})}, Unsupported),
        (
            {ANNOTATION_KEYS_JWE: None, "org.opencontainers.image.enc.keys.pgp": "AAAA"},
            Unsupported,
        ),
    ],
)
def test_bad_annotations(sample, rsa_key, change, error) -> None:
    _, ct, ann = sample
    bad = {**ann, **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    with pytest.raises(error):
        DecryptingReader(io.BytesIO(ct), annotations=bad, keys=[rsa_key])


def test_bad_jwe_entry_is_skipped(sample, rsa_key) -> None:
    data, ct, ann = sample
    junk = base64.b64encode(b'{"nonsense": true}').decode()
    mixed = {**ann, ANNOTATION_KEYS_JWE: junk + "," + ann[ANNOTATION_KEYS_JWE]}
    assert decrypt(ct, mixed, [rsa_key]) == data


def test_hmac_in_old_cipheroptions_place(sample, rsa_key) -> None:
    # early ocicrypt releases stored the tag as public cipheroptions["hmac"]
    data, ct, ann = sample
    pub = json.loads(base64.b64decode(ann[ANNOTATION_PUBOPTS]))
    old = {"cipher": pub["cipher"], "hmac": None, "cipheroptions": {"hmac": pub["hmac"]}}
    assert decrypt(ct, {**ann, ANNOTATION_PUBOPTS: _pubopts(old)}, [rsa_key]) == data


def test_public_nonce_is_ignored(sample, rsa_key) -> None:
    # a nonce planted in the unauthenticated public options must not be used
    data, ct, ann = sample
    pub = json.loads(base64.b64decode(ann[ANNOTATION_PUBOPTS]))
    pub["cipheroptions"] = {"nonce": base64.b64encode(b"\0" * 16).decode()}
    assert decrypt(ct, {**ann, ANNOTATION_PUBOPTS: _pubopts(pub)}, [rsa_key]) == data


# -- keys -----------------------------------------------------------------------------------


def test_load_private_key_forms(keys, tmp_path) -> None:
    for spec in (
        str(keys.rsa_pem),
        str(keys.ec8_pem),
        f"{keys.rsa_enc_pem}:{PASSWORD}",
        f"{keys.rsa_enc_pem}:pass={PASSWORD}",
        f"{keys.rsa_pem}:unneeded-password",
    ):
        assert isinstance(load_private_key(spec), DecryptKey)
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    assert load_private_key(f"{keys.rsa_enc_pem}:file={pwfile}").kind == "RSA-2048"
    colon = tmp_path / "a:b.pem"
    colon.write_bytes(keys.rsa_pem.read_bytes())
    assert load_private_key(str(colon)).kind == "RSA-2048"


def test_load_private_key_errors_leak_nothing(keys, tmp_path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cases = [
        (f"{keys.rsa_enc_pem}:wrong-{PASSWORD}", InvalidArgument),
        (str(keys.rsa_enc_pem), InvalidArgument),  # encrypted, no password
        (str(garbage), InvalidArgument),
        (str(keys.rsa_pub), InvalidArgument),  # a public key is not a private key
        (str(tmp_path / "missing.pem") + f":{PASSWORD}", NotFound),
        (str(ed), Unsupported),
    ]
    for spec, error in cases:
        with pytest.raises(error) as exc:
            load_private_key(spec)
        text = str(exc.value) + repr(exc.value)
        assert PASSWORD not in text, spec
        for body in keys.secret_bodies():
            assert body not in text
        assert exc.value.__cause__ is None
    key = load_private_key(f"{keys.rsa_enc_pem}:{PASSWORD}")
    assert PASSWORD not in repr(key) and PASSWORD not in str(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_load_recipient_schemes(keys) -> None:
    for scheme in ("pgp", "pkcs7", "pkcs11", "provider"):
        with pytest.raises(Unsupported, match=scheme):
            load_recipient(f"{scheme}:{keys.rsa_pub}")
    with pytest.raises(InvalidArgument):
        load_recipient(str(keys.rsa_pub))  # no scheme
    with pytest.raises(InvalidArgument):
        load_recipient(f"jwe:{keys.rsa_pem}")  # a private key
    with pytest.raises(NotFound):
        load_recipient(f"jwe:{keys.dir / 'nope.pem'}")
    with pytest.raises(InvalidArgument):
        load_recipient(f"jwe:{keys.ec_pub}", algorithm="RSA-OAEP")
    r = load_recipient(f"jwe:{keys.ec384_pub}")
    assert (r.kind, r.algorithm) == ("EC-P-384", "ECDH-ES+A256KW")


def test_checksum_of_roundtrip_large(rsa_key, rsa_rcpt) -> None:
    # several default-size chunks, odd tail
    data = hashlib.sha256(b"seed").digest() * ((3 << 20) // 32 + 7)
    ct, ann = encrypt(data, [rsa_rcpt])
    assert (
        hashlib.sha256(decrypt(ct, ann, [rsa_key], n=65536)).digest()
        == hashlib.sha256(data).digest()
    )
