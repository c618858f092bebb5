"""Real registries for the tests: Debian's ``docker-registry`` (CNCF distribution 2.8).

Fixtures (loaded as a pytest plugin from conftest.py):

- ``registry`` (session): open, plain HTTP on 127.0.0.1;
- ``registry_basic_tls`` (session): htpasswd (bcrypt) Basic auth over TLS, with a CA the
  session generates (``.ca_file``);
- ``registry_token`` (session): ``auth.token`` with :class:`tokenserver.TokenServer` as
  realm; anonymous callers may pull, ``.username`` may push and pull;
- ``fault_proxy`` (function): a factory ``fault_proxy(registry) -> FaultProxy``, a
  misbehaving proxy in front of a registry (see faultproxy.py); closed after the test.

A :class:`Registry` knows its ``host``/``url``/``ca_file``/``username``/``password``, puts
images into itself with skopeo (``push_layout``) and copies them out (``copy_out``), and
answers raw requests (``request``, ``manifest``, ``manifest_digest``) with its own
credentials. ``make_random_image`` writes an OCI layout of incompressible tar layers;
``read_layout`` reads a layout's tagged manifest.

Each registry has its own storage directory and a free port; it is ready when ``GET /v2/``
answers (200 or 401), polled with a deadline. Registries are shared by the session, so
tests use repository names of their own. A missing registry binary fails the tests with
the install hint: they never skip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faultproxy import FaultProxy
from tokenserver import ISSUER, TokenServer

REGISTRY_BIN = "docker-registry"
READY_TIMEOUT = 30.0  # seconds; the registry starts in well under a second here
TEST_USER = "tester"
SKOPEO_TIMEOUT = 300
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate valid for a day around now."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_tls(directory: Path) -> TLSFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca("imgpipe test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca_cert.write_bytes(_cert_pem(ca_cert))
    files.cert.write_bytes(_cert_pem(cert))
    _write_key(key, files.key)
    return files


# -- the registry --------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {package}", pytrace=False)
    return path


@dataclass
class Registry:
    """A running registry: where it is, how to reach it, how to put images into it."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http(s)://127.0.0.1:PORT"
    storage: Path
    workdir: Path  # scratch space: config, logs, skopeo's HOME
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ref(self, repo: str, tag: str) -> str:
        return f"{self.host}/{repo}:{tag}"

    # -- skopeo as the independent peer ----------------------------------------------------

    def skopeo_env(self) -> dict[str, str]:
        """An environment that keeps skopeo's state in the workdir (never the user's)."""
        home = self.workdir / "skopeo-home"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE",)}
        env.update(
            HOME=str(home),
            TMPDIR=str(home / "tmp"),
            XDG_RUNTIME_DIR=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            DOCKER_CONFIG=str(home / ".docker"),
        )
        return env

    def _policy(self) -> Path:
        policy = self.workdir / "policy.json"
        if not policy.exists():
            policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        return policy

    def _tls_flags(self, side: str) -> list[str]:
        if self.ca_file is None:
            return [f"--{side}-tls-verify=false"]
        certs = self.workdir / "skopeo-certs"
        certs.mkdir(exist_ok=True)
        shutil.copyfile(self.ca_file, certs / "ca.crt")
        return [f"--{side}-cert-dir={certs}"]

    def _cred_flags(self, side: str) -> list[str]:
        if self.username is None:
            return [f"--{side}-no-creds"]
        return [f"--{side}-creds={self.username}:{self.password}"]

    def skopeo(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``skopeo --policy P ARGS`` in the isolated environment; fail on error."""
        skopeo = require_tool("skopeo", "skopeo")
        proc = subprocess.run(
            [skopeo, "--policy", str(self._policy()), *args],
            capture_output=True,
            text=True,
            env=self.skopeo_env(),
            timeout=SKOPEO_TIMEOUT,
        )
        if proc.returncode != 0:
            # the command line may carry --creds: show only the error
            raise AssertionError(f"skopeo {args[0]} failed: {proc.stderr.strip()}")
        return proc

    def push_layout(
        self, layout: Path, tag_in_layout: str, repo: str, tag: str, *, docker_format: bool = False
    ) -> None:
        """Copy ``oci:LAYOUT:TAG`` (every platform) to ``REPO:TAG`` here with skopeo.

        Digests are preserved, unless ``docker_format``: then skopeo converts the manifest
        to Docker schema2 (the layers keep their bytes; the manifest digest changes).
        """
        mode = ["--format", "v2s2"] if docker_format else ["--preserve-digests"]
        self.skopeo(
            "copy",
            "--quiet",
            "--all",
            *mode,
            *self._tls_flags("dest"),
            *self._cred_flags("dest"),
            f"oci:{layout}:{tag_in_layout}",
            f"docker://{self.ref(repo, tag)}",
        )

    def copy_out(self, repo: str, tag: str, dest: Path, tag_in_layout: str = "") -> None:
        """Copy ``REPO:TAG`` (every platform) from here with skopeo, digests kept.

        With ``tag_in_layout`` into ``oci:DEST:TAG``; without, into ``dir:DEST`` (which
        keeps a Docker schema2 manifest as it is: an OCI layout cannot without conversion).
        """
        target = f"oci:{dest}:{tag_in_layout}" if tag_in_layout else f"dir:{dest}"
        self.skopeo(
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            *self._tls_flags("src"),
            *self._cred_flags("src"),
            f"docker://{self.ref(repo, tag)}",
            target,
        )

    def auth_file(self, tmp_path: Path) -> Path:
        """A Docker config.json under ``tmp_path`` holding this registry's credentials."""
        assert self.username is not None and self.password is not None
        path = tmp_path / "auth" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        path.chmod(0o600)
        return path

    # -- raw HTTP, for assertions about what the registry holds ----------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _bearer(self, scope: str) -> str:
        assert self.token_server is not None
        realm = self.token_server.realm
        host_port = realm.split("/")[2]
        conn = http.client.HTTPConnection(host_port, timeout=10)
        try:
            headers = {}
            if self.username is not None:
                basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            service = self.token_server.service
            conn.request("GET", f"/token?service={service}&scope={scope}", headers=headers)
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        return f"Bearer {body['token']}"

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, scope: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with this registry's credentials: (status, headers, body)."""
        hdrs = dict(headers or {})
        if "/manifests/" in path:
            # distribution 2.8 hides OCI manifests from clients that do not accept them
            hdrs.setdefault("Accept", MANIFEST_ACCEPT)
        if self.token_server is not None:
            hdrs["Authorization"] = self._bearer(scope)
        elif self.username is not None:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            hdrs["Authorization"] = f"Basic {basic}"
        ctx = self.ssl_context()
        conn: http.client.HTTPConnection
        if ctx is not None:
            conn = http.client.HTTPSConnection(self.host, timeout=30, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def manifest_digest(self, repo: str, tag: str) -> str:
        """The digest the registry reports for ``REPO:TAG`` (HEAD, any manifest type)."""
        status, headers, _ = self.request(
            "HEAD", f"/v2/{repo}/manifests/{tag}", scope=f"repository:{repo}:pull"
        )
        assert status == 200, f"HEAD {repo}:{tag} -> {status}"
        return headers["docker-content-digest"]

    def manifest(self, repo: str, reference: str) -> bytes:
        """The manifest bytes for a tag or digest (GET, any manifest type)."""
        status, _, body = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull"
        )
        assert status == 200, f"GET {repo}:{reference} -> {status}"
        return body

    # -- lifecycle -------------------------------------------------------------------------

    def wait_ready(self, deadline: float) -> None:
        """Poll ``GET /v2/`` until it answers 200 or 401, or fail at the deadline."""
        ctx = self.ssl_context()
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            conn: http.client.HTTPConnection
            if ctx is not None:
                conn = http.client.HTTPSConnection(self.host, timeout=2, context=ctx)
            else:
                conn = http.client.HTTPConnection(self.host, timeout=2)
            try:
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                if status in (200, 401):
                    return
                last = f"HTTP {status}"
            except OSError as exc:
                last = str(exc)
            finally:
                conn.close()
            # wait on the process rather than sleep: returns early if it dies
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=0.05)
        log = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"registry on {self.host} did not become ready ({last}):\n{log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()


def start_registry(
    workdir: Path,
    *,
    tls: TLSFiles | None = None,
    htpasswd: tuple[str, str] | None = None,
    token: TokenServer | None = None,
    token_bundle: Path | None = None,
) -> Registry:
    """Start ``docker-registry serve`` with a config for the requested security."""
    binary = require_tool(REGISTRY_BIN, "docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": secrets.token_hex(16)},
    }
    username = password = None
    if tls is not None:
        config["http"] = {
            "addr": host,
            "secret": secrets.token_hex(16),
            "tls": {"certificate": str(tls.cert), "key": str(tls.key)},
        }
    if htpasswd is not None:
        username, password = htpasswd
        tool = require_tool("htpasswd", "apache2-utils")
        line = subprocess.run(
            [tool, "-Bbn", username, password], capture_output=True, text=True, check=True
        ).stdout.strip()
        pwfile = workdir / "htpasswd"
        pwfile.write_text(line + "\n")
        config["auth"] = {"htpasswd": {"realm": "imgpipe-test", "path": str(pwfile)}}
    if token is not None:
        assert token_bundle is not None
        username, password = token.username, token.password
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": ISSUER,
                "rootcertbundle": str(token_bundle),
            }
        }
    cfg = workdir / "config.yml"
    # JSON is YAML: no YAML writer needed
    cfg.write_text(json.dumps(config, indent=2))
    log = (workdir / "registry.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen(
        [binary, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    log.close()
    reg = Registry(
        host=host,
        url=f"{'https' if tls else 'http'}://{host}",
        storage=storage,
        workdir=workdir,
        ca_file=tls.ca_cert if tls else None,
        username=username,
        password=password,
        token_server=token,
        process=proc,
    )
    try:
        reg.wait_ready(time.monotonic() + READY_TIMEOUT)
    except BaseException:
        reg.stop()
        raise
    return reg


# -- images for the tests ------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutImage:
    """What an OCI layout's tagged image is made of (from its files)."""

    manifest_digest: str
    manifest: dict[str, Any]

    @property
    def layers(self) -> list[tuple[str, int]]:
        return [(layer["digest"], layer["size"]) for layer in self.manifest["layers"]]

    @property
    def blobs(self) -> list[str]:
        return [self.manifest["config"]["digest"], *(d for d, _ in self.layers)]


def read_layout(layout: Path, tag: str) -> LayoutImage:
    """The manifest tagged ``tag`` in an OCI layout (the ref.name annotation)."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            raw = (layout / "blobs" / "sha256" / m["digest"].split(":")[1]).read_bytes()
            return LayoutImage(m["digest"], json.loads(raw))
    raise AssertionError(f"{layout} has no image tagged {tag}")


def make_random_image(
    layout: Path, tag: str, layer_sizes: list[int], *, seed: int = 0
) -> LayoutImage:
    """Write an OCI layout whose image has uncompressed tar layers of random bytes.

    Each layer is a tar of one file of about ``size`` bytes (incompressible, so byte
    counts at a proxy mean what they say). Streamed to disk in 1 MiB pieces.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def put(data_path: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        with data_path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = h.hexdigest()
        size = data_path.stat().st_size
        data_path.replace(blobs / digest)
        return f"sha256:{digest}", size

    layers = []
    for i, size in enumerate(layer_sizes):
        tmp = layout / f"layer-{i}.tmp"
        payload = layout / f"payload-{i}.tmp"
        with payload.open("wb") as f:
            left = size
            while left > 0:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tar.gettarinfo(str(payload), arcname=f"data-{i}.bin")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with payload.open("rb") as pf:
                tar.addfile(info, pf)
        payload.unlink()
        layers.append(put(tmp))

    def put_json(obj: dict[str, Any]) -> tuple[str, int]:
        tmp = layout / "doc.tmp"
        tmp.write_bytes(json.dumps(obj, separators=(",", ":")).encode())
        return put(tmp)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
        "config": {},
    }
    cdigest, csize = put_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cdigest,
            "size": csize,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}
            for d, n in layers
        ],
    }
    mdigest, msize = put_json(manifest)
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "manifests": []}
    )
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest,
            "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    index_path.write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return LayoutImage(mdigest, manifest)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry over plain HTTP on 127.0.0.1."""
    reg = start_registry(tmp_path_factory.mktemp("registry-open"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def registry_basic_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """htpasswd (bcrypt) Basic auth over TLS; ``.ca_file`` is the CA to trust."""
    workdir = tmp_path_factory.mktemp("registry-basic")
    tls = make_tls(workdir / "tls")
    reg = start_registry(workdir, tls=tls, htpasswd=(TEST_USER, secrets.token_urlsafe(12)))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Token auth: anonymous pull, ``.username``/``.password`` push; plain HTTP."""
    workdir = tmp_path_factory.mktemp("registry-token")
    key, cert = make_ca("imgpipe test token signer")
    bundle = workdir / "token-signer.crt"
    bundle.write_bytes(_cert_pem(cert))
    server = TokenServer(
        key=key,
        cert=cert,
        service="imgpipe-test-registry",
        username=TEST_USER,
        password=secrets.token_urlsafe(12),
    ).start()
    try:
        reg = start_registry(workdir, token=server, token_bundle=bundle)
    except BaseException:
        server.stop()
        raise
    yield reg
    reg.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[Registry], FaultProxy]]:
    """``fault_proxy(registry)``: a fresh misbehaving proxy in front of ``registry``."""
    proxies: list[FaultProxy] = []

    def make(upstream: Registry) -> FaultProxy:
        proxy = FaultProxy(upstream.host, upstream_tls=upstream.ssl_context()).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
