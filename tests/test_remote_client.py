"""The registry client's parts: retry and plain-HTTP decisions, the registry config,
challenges, tokens, redirects and resumption, against real servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from faultproxy import FaultProxy
from registry_fixtures import Registry
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

import imgpipe
from fixtures.build import root_digest
from imgpipe.config import load_registry_config
from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import (
    DigestMismatch,
    IntegrityError,
    MalformedDocument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from imgpipe.formats.mediatype import OCI_LAYER_GZIP
from imgpipe.formats.reference import parse_reference
from imgpipe.remote.auth import Authorizer, parse_challenges
from imgpipe.remote.client import RegistryClient
from imgpipe.remote.credentials import Credentials
from imgpipe.remote.hosts import DOCKER_HUB_API_HOST, is_loopback, schemes_for
from imgpipe.remote.http import HttpClient, is_retryable
from imgpipe.store import Store
from imgpipe.transports import TransportOptions

# -- decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (200, False),
        (201, False),
        (206, False),
        (301, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (405, False),
        (413, False),
        (416, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (501, False),
        (505, False),
    ],
)
def test_retry_predicate_statuses(status: int, retry: bool) -> None:
    assert is_retryable(status=status) is retry


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (NewConnectionError(None, "Connection refused"), True),  # type: ignore[arg-type]
        (ConnectTimeoutError(), True),
        (ReadTimeoutError(None, "/", "read timed out"), True),  # type: ignore[arg-type]
        (ProtocolError("Connection aborted.", ConnectionResetError()), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (SSLError("certificate verify failed"), False),
        (NameResolutionError("nohost", None, OSError()), False),  # type: ignore[arg-type]
        (Unavailable("ours"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
        (PermissionError(), False),
    ],
)
def test_retry_predicate_errors(error: BaseException, retry: bool) -> None:
    assert is_retryable(error=error) is retry


@pytest.mark.parametrize(
    ("host", "plain", "insecure", "want"),
    [
        ("registry.example.com", False, False, ("https",)),
        ("registry.example.com:5000", False, False, ("https",)),
        ("10.0.0.5:5000", False, False, ("https",)),
        ("localhost.example.com", False, False, ("https",)),
        ("127.0.0.1:5000", False, False, ("https", "http")),
        ("127.8.9.10", False, False, ("https", "http")),
        ("localhost:5000", False, False, ("https", "http")),
        ("[::1]:5000", False, False, ("https", "http")),
        ("registry.example.com", False, True, ("https", "http")),
        ("registry.example.com", True, False, ("http",)),
    ],
)
def test_plain_http_decision(host: str, plain: bool, insecure: bool, want: tuple[str, ...]) -> None:
    assert schemes_for(host, plain_http=plain, insecure=insecure) == want


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("LOCALHOST:1")
    assert not is_loopback("128.0.0.1") and not is_loopback("example.com")


def test_non_loopback_host_without_plain_http_never_uses_http() -> None:
    client = RegistryClient(TransportOptions(registry_config=None))
    repo = client.repository(parse_reference("registry.example.com/a/b:1"))
    assert [ep.schemes for ep in repo.endpoints] == [("https",)]
    hub = client.repository(parse_reference("alpine"))
    assert hub.endpoints[-1].host == DOCKER_HUB_API_HOST


# -- registries.toml -----------------------------------------------------------------------


def test_registry_config_mirrors_ca_insecure(tmp_path: Path) -> None:
    cfg = tmp_path / "registries.toml"
    cfg.write_text(
        '[registry."registry.example.com"]\n'
        'mirrors = ["mirror.example.com:5000", "http://plain.example.com"]\n'
        'ca = "certs/ca.pem"\n'
        '[registry."mirror.example.com:5000"]\n'
        "insecure = true\n"
    )
    conf = load_registry_config(cfg)
    pull = conf.endpoints("registry.example.com")
    assert [(e.host, e.schemes, e.namespace) for e in pull] == [
        ("mirror.example.com:5000", ("https", "http"), "registry.example.com"),
        ("plain.example.com", ("http",), "registry.example.com"),
        ("registry.example.com", ("https",), ""),
    ]
    assert pull[-1].ca == str(tmp_path / "certs/ca.pem")
    push = conf.endpoints("registry.example.com", push=True)
    assert [e.host for e in push] == ["registry.example.com"]  # mirrors never take pushes
    # --tls-ca applies where the host names no CA of its own
    assert conf.endpoints("other.example.com", tls_ca="/x.pem")[-1].ca == "/x.pem"


@pytest.mark.parametrize(
    "text",
    [
        '[registry."h"]\nmirror = ["x"]\n',  # typo'd key
        '[registry."h"]\ninsecure = "yes"\n',
        '[registry."h"]\nmirrors = ["ftp://x"]\n',
        '[hosts."h"]\n',
        "not toml = = \n",
    ],
)
def test_registry_config_errors(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "registries.toml"
    cfg.write_text(text)
    with pytest.raises(MalformedDocument, match=str(cfg)):
        load_registry_config(cfg)


def test_registry_config_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_CONFIG", str(tmp_path))
    assert load_registry_config().hosts == {}  # missing default file: no config
    (tmp_path / "registries.toml").write_text('[registry."a.example"]\ninsecure = true\n')
    assert load_registry_config().host("a.example").insecure
    with pytest.raises(NotFound):
        load_registry_config(tmp_path / "missing.toml")


def test_mirror_is_tried_first_then_the_registry(
    registry: Registry,
    fixture_dir: Path,
    tmp_path: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    """A mirror that lacks the image is skipped; one that has it serves it with ?ns=."""
    registry.push_layout(fixture_dir / "busybox", "busybox", "mirrored/busybox", "1")
    proxy = fault_proxy(registry)  # acts as a mirror of a registry that does not exist
    cfg = tmp_path / "registries.toml"
    cfg.write_text(f'[registry."registry.invalid"]\nmirrors = ["http://{proxy.host}"]\n')
    opts = TransportOptions(registry_config=str(cfg))
    rec = imgpipe.pull("registry.invalid/mirrored/busybox:1", store=store, options=opts)
    assert rec.target.digest == root_digest(fixture_dir / "busybox")
    assert all("ns=registry.invalid" in r.path for r in proxy.log("/v2/mirrored/"))


def test_library_pull_reads_the_default_registries_toml(
    registry: Registry,
    fixture_dir: Path,
    tmp_path: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
    *,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that passes no options gets the mirrors of <config dir>/registries.toml,
    as the command does (the registry client itself never reads configuration)."""
    registry.push_layout(fixture_dir / "busybox", "busybox", "mirrored/busybox", "1")
    proxy = fault_proxy(registry)
    (tmp_path / "registries.toml").write_text(
        f'[registry."registry.invalid"]\nmirrors = ["http://{proxy.host}"]\n'
    )
    monkeypatch.setenv("IMGPIPE_CONFIG", str(tmp_path))
    rec = imgpipe.pull("registry.invalid/mirrored/busybox:1", store=store)
    assert rec.target.digest == root_digest(fixture_dir / "busybox")
    assert proxy.log("/v2/mirrored/")


# -- challenges and tokens -----------------------------------------------------------------


def test_parse_challenges() -> None:
    got = parse_challenges(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push", Basic realm="x y", Negotiate'
    )
    assert [c.scheme for c in got] == ["bearer", "basic", "negotiate"]
    assert got[0].params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:a/b:pull,push",
    }
    assert got[1].params == {"realm": "x y"}
    assert parse_challenges('Basic realm="a\\"b"')[0].params["realm"] == 'a"b'
    assert parse_challenges("bearer realm=tok") == [parse_challenges('Bearer realm="tok"')[0]]
    assert parse_challenges("") == []


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_cached_per_scope_until_they_expire(registry_token: Registry) -> None:
    reg = registry_token
    assert reg.token_server is not None
    clock = _Clock()
    http = HttpClient(user_agent="test")
    auth = Authorizer(http, lambda host: None, clock=clock)
    challenge = f'Bearer realm="{reg.token_server.realm}",service="{reg.token_server.service}"'
    before = len(reg.token_server.log)
    a1 = auth.challenge(reg.host, challenge, ["repository:x/a:pull"])
    assert auth.header(reg.host, ["repository:x/a:pull"]) == a1  # cached
    b1 = auth.header(reg.host, ["repository:x/b:pull"])  # another scope: its own token
    assert b1 is not None and b1 != a1
    assert len(reg.token_server.log) == before + 2
    clock.now += reg.token_server.ttl  # past expires_in (minus the margin)
    a2 = auth.header(reg.host, ["repository:x/a:pull"])
    assert a2 is not None and a2 != a1
    assert len(reg.token_server.log) == before + 3
    assert "eyJ" not in repr(auth)  # no token in the repr


def test_wrong_password_is_unauthorized_without_leaking_it(
    registry_token: Registry, registry_basic_tls: Registry, store: Store
) -> None:
    for reg in (registry_token, registry_basic_tls):
        secret = "s3cret-Pa55word-xyz"
        client_opts = TransportOptions(tls_ca=str(reg.ca_file) if reg.ca_file else None)
        user = reg.username or ""
        client = RegistryClient(
            client_opts, credentials=lambda host, u=user, pw=secret: Credentials(u, pw)
        )
        repo = client.repository(parse_reference(reg.ref("any/thing", "1")), push=True)
        with pytest.raises(Unauthorized) as info:
            repo.resolve()
        assert secret not in str(info.value)
        assert reg.host in str(info.value)


# -- redirects and foreign URLs: no credentials to another host ---------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Blob storage: serves ``payload`` for any GET and records the headers it got."""

    protocol_version = "HTTP/1.1"
    payload = b""
    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)


class _AuthRegistry(http.server.BaseHTTPRequestHandler):
    """A registry asking for Basic auth whose blobs live at ``storage`` (another host)."""

    protocol_version = "HTTP/1.1"
    storage = ""
    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        if "Authorization" not in self.headers:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)
        self.send_header("Location", f"{self.storage}/store{self.path}?X-Signature=secret")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def servers() -> Iterator[tuple[str, str, type[_AuthRegistry], type[_Recorder]]]:
    payload = b"layer bytes " * 1000

    class Storage(_Recorder):
        seen: ClassVar[list[dict[str, str]]] = []

    Storage.payload = payload

    class Reg(_AuthRegistry):
        seen: ClassVar[list[dict[str, str]]] = []

    running = []
    for handler in (Storage, Reg):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        t.start()
        running.append((srv, t))
    storage = f"http://127.0.0.1:{running[0][0].server_address[1]}"
    Reg.storage = storage
    reg_host = f"127.0.0.1:{running[1][0].server_address[1]}"
    yield reg_host, storage, Reg, Storage
    for srv, t in running:
        srv.shutdown()
        srv.server_close()
        t.join()


def test_credentials_are_not_sent_across_a_redirect(
    servers: tuple[str, str, type[_AuthRegistry], type[_Recorder]],
) -> None:
    reg_host, _storage, reg, storage = servers
    payload = storage.payload
    desc = Descriptor(OCI_LAYER_GZIP, Digest.from_bytes(payload), len(payload))
    client = RegistryClient(
        TransportOptions(plain_http=True), credentials=lambda host: Credentials("u", "pw")
    )
    repo = client.repository(parse_reference(f"{reg_host}/a/b:1"))
    with repo.open_blob(desc) as f:
        got = f.read(len(payload) + 1)
    assert got == payload
    assert reg.seen[-1]["authorization"].startswith("Basic ")  # the registry got them
    assert storage.seen and all("authorization" not in h for h in storage.seen)


def test_descriptor_urls_get_no_credentials(
    servers: tuple[str, str, type[_AuthRegistry], type[_Recorder]],
) -> None:
    reg_host, storage_url, _reg, storage = servers
    payload = storage.payload
    desc = Descriptor(
        OCI_LAYER_GZIP,
        Digest.from_bytes(payload),
        len(payload),
        urls=(f"{storage_url}/foreign/layer",),
    )
    client = RegistryClient(
        TransportOptions(plain_http=True), credentials=lambda host: Credentials("u", "pw")
    )
    repo = client.repository(parse_reference(f"{reg_host}/a/b:1"))
    client.auth.challenge(reg_host, 'Basic realm="x"', repo.scopes)  # we hold credentials
    with repo.open_blob(desc) as f:
        assert f.read(len(payload)) == payload
    assert storage.seen and all("authorization" not in h for h in storage.seen)


def test_redirect_keeps_authorization_on_the_same_host_only() -> None:
    """A redirect within one origin keeps Authorization (another origin: the tests above)."""
    got: list[str | None] = []

    class Both(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            got.append(self.headers.get("Authorization"))
            if self.path == "/first":
                self.send_response(302)
                self.send_header("Location", "/second")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Both)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        resp = HttpClient(user_agent="t").send(
            "GET", f"http://127.0.0.1:{port}/first", headers={"Authorization": "Bearer t"}
        )
        assert resp.status == 200
        assert got == ["Bearer t", "Bearer t"]  # same origin: kept (other ports: see above)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


# -- faults: resume, retry, corrupt --------------------------------------------------------


@pytest.fixture(scope="module")
def layered_repo(registry: Registry, fixture_dir: Path) -> str:
    registry.push_layout(fixture_dir / "layered", "layered", "faults/layered", "1")
    return "faults/layered"


def _biggest_layer(fixture_dir: Path) -> tuple[str, int]:
    blobs = fixture_dir / "layered/blobs/sha256"
    big = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    return f"sha256:{big.name}", big.stat().st_size


def test_dropped_connection_resumes_with_range(
    registry: Registry,
    layered_repo: str,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    digest, size = _biggest_layer(fixture_dir)
    assert size > 2000
    proxy = fault_proxy(registry)
    cut = size // 2
    proxy.drop_once(f"/blobs/{digest}", after=cut)
    rec = imgpipe.pull(proxy.ref(layered_repo, "1"), store=store)
    assert rec.target.digest == root_digest(fixture_dir / "layered")
    gets = proxy.log(f"/blobs/{digest}", method="GET")
    assert len(gets) == 2
    assert "range" not in {k.lower() for k in gets[0].headers}
    assert {k.lower(): v for k, v in gets[1].headers.items()}["range"] == f"bytes={cut}-"
    assert proxy.served(f"/blobs/{digest}") == size  # not a byte twice
    assert list(store.content.verify()) == []


def test_server_errors_are_retried(
    registry: Registry,
    layered_repo: str,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    proxy = fault_proxy(registry)
    proxy.fail("/manifests/", status=503, times=2)
    digest, _ = _biggest_layer(fixture_dir)
    proxy.fail(f"/blobs/{digest}", status=500, times=1)
    imgpipe.pull(proxy.ref(layered_repo, "1"), store=store)
    assert len(proxy.log(f"/blobs/{digest}", method="GET")) == 2


def test_persistent_server_error_is_unavailable(
    registry: Registry,
    layered_repo: str,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    proxy = fault_proxy(registry)
    proxy.fail("/manifests/", status=500, times=100)
    with pytest.raises(Unavailable, match=rf"{layered_repo}:1: HTTP 500"):
        imgpipe.pull(proxy.ref(layered_repo, "1"), store=store)


def test_corrupt_blob_is_refused_and_nothing_kept(
    registry: Registry,
    layered_repo: str,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    digest, _ = _biggest_layer(fixture_dir)
    proxy = fault_proxy(registry)
    proxy.corrupt(f"/blobs/{digest}", offset=10)
    with pytest.raises(DigestMismatch, match=digest):
        imgpipe.pull(proxy.ref(layered_repo, "1"), store=store)
    assert not store.content.exists(Digest.parse(digest))
    assert store.db.list_images() == []
    # the good registry still works afterwards
    imgpipe.pull(registry.ref(layered_repo, "1"), store=store)
    assert store.content.exists(Digest.parse(digest))


def test_wrong_manifest_for_a_digest_is_refused(
    registry: Registry,
    layered_repo: str,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    digest = root_digest(fixture_dir / "layered")
    other = fixture_dir / "busybox/blobs/sha256" / root_digest(fixture_dir / "busybox").encoded
    proxy = fault_proxy(registry)
    proxy.replace_body(f"/manifests/{digest}", other.read_bytes())
    with pytest.raises(IntegrityError):
        imgpipe.pull(f"{proxy.host}/{layered_repo}@{digest}", store=store)
    assert store.db.list_images() == []


def test_tls_probe_tells_plain_http_from_tls(registry, registry_basic_tls) -> None:  # type: ignore[no-untyped-def]
    """The handshake-only probe that spares loopback plain-HTTP registries the HTTPS
    attempt: False only for a server that plainly does not speak TLS."""
    import socket

    from imgpipe.remote.http import speaks_tls

    assert speaks_tls(registry.host) is False
    assert speaks_tls(registry_basic_tls.host) is True
    with socket.socket() as s:  # a port nobody listens on: no verdict, HTTPS decides
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert speaks_tls(f"127.0.0.1:{free}") is True
