"""Pull and push against a real registry (Debian's docker-registry, see registry_fixtures).

Images reach the registry with skopeo (``push_layout``) so pulls are tested before and
independently of our push; what we push is checked against what skopeo reads back and
against the registry's own answers.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli
from faultproxy import FaultProxy
from registry_fixtures import Registry

import imgpipe
from fixtures.build import root_digest
from imgpipe import Event, EventKind
from imgpipe.formats.errors import NotFound, Unauthorized, Unavailable, Unsupported
from imgpipe.formats.platform import Platform
from imgpipe.remote.transport import RegistrySink
from imgpipe.store import Store
from imgpipe.transports import TransportOptions

OPEN = TransportOptions()
ALL_FIXTURES = (
    "busybox",
    "busybox-zstd",
    "busybox-uncompressed",
    "busybox-docker",
    "busybox-multiarch",
    "layered",
    "layered-zstd",
    "layered-uncompressed",
    "layered-docker",
)


# skopeo 1.9's oci: transport only finds OCI-typed entries in index.json, so the Docker
# media-type fixtures reach the registry through our own push only.
SKOPEO_FIXTURES = tuple(n for n in ALL_FIXTURES if not n.endswith("-docker"))


@pytest.fixture(scope="module")
def seeded(registry: Registry, fixture_dir: Path) -> Registry:
    """The open registry with the OCI fixture images at ``fixtures/NAME:NAME`` (skopeo)."""
    for name in SKOPEO_FIXTURES:
        if name == "busybox-multiarch":
            continue
        registry.push_layout(fixture_dir / name, name, "fixtures/" + name, name)
    # push_layout copies only this host's platform of an index; --all keeps the index
    name = "busybox-multiarch"
    registry.skopeo(
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        f"oci:{fixture_dir / name}:{name}",
        f"docker://{registry.ref('fixtures/' + name, name)}",
    )
    return registry


def _blob_digests(store: Store) -> set[str]:
    return {str(i.digest) for i in store.content.walk()}


def test_pull_by_tag_lands_the_image_with_every_blob_verified(
    seeded: Registry, fixture_dir: Path, store: Store
) -> None:
    events: list[Event] = []
    rec = imgpipe.pull(
        seeded.ref("fixtures/layered", "layered"), store=store, observer=events.append
    )
    assert rec.name == seeded.ref("fixtures/layered", "layered")
    assert rec.target.digest == root_digest(fixture_dir / "layered")
    # every blob of the layout is now in the store, byte for byte
    layout_blobs = {f"sha256:{p.name}" for p in (fixture_dir / "layered/blobs/sha256").iterdir()}
    assert layout_blobs <= _blob_digests(store)
    assert list(store.content.verify()) == []
    kinds = [e.kind for e in events]
    assert EventKind.RESOLVED in kinds and EventKind.IMAGE_RECORDED in kinds
    done = [e for e in events if e.kind == EventKind.BLOB_DONE]
    assert len(done) >= 3 and all(e.detail == "done" for e in done)
    # the last progress event of each layer has all its bytes
    for e in done:
        last = [p for p in events if p.kind == EventKind.BLOB_PROGRESS and p.digest == e.digest]
        assert last and last[-1].offset == e.size and last[-1].detail == "verifying"


def test_pull_by_digest_and_again_skips_what_is_stored(
    seeded: Registry, fixture_dir: Path, store: Store
) -> None:
    digest = root_digest(fixture_dir / "busybox")
    ref = f"docker://{seeded.host}/fixtures/busybox@{digest}"
    rec = imgpipe.pull(ref, store=store)
    assert rec.target.digest == digest
    events: list[Event] = []
    imgpipe.pull(ref, store=store, observer=events.append)
    assert not [e for e in events if e.kind == EventKind.BLOB_START]
    assert [e for e in events if e.kind == EventKind.BLOB_EXISTS]


def test_pull_by_digest_of_another_image_is_not_found(
    seeded: Registry, fixture_dir: Path, store: Store
) -> None:
    other = root_digest(fixture_dir / "layered")
    with pytest.raises(NotFound, match="fixtures/busybox"):
        imgpipe.pull(f"{seeded.host}/fixtures/busybox@{other}", store=store)
    assert _blob_digests(store) == set()


def test_multiarch_index_picks_the_requested_platform(
    seeded: Registry, fixture_dir: Path, store: Store
) -> None:
    ref = seeded.ref("fixtures/busybox-multiarch", "busybox-multiarch")
    index = json.loads(
        (
            fixture_dir
            / "busybox-multiarch/blobs/sha256"
            / root_digest(fixture_dir / "busybox-multiarch").encoded
        ).read_bytes()
    )
    platforms = [m["platform"] for m in index["manifests"] if "platform" in m]
    assert len(platforms) >= 2
    want = platforms[-1]
    plat = f"{want['os']}/{want['architecture']}" + (
        f"/{want['variant']}" if want.get("variant") else ""
    )
    rec = imgpipe.pull(ref, platform=plat, store=store)
    details = imgpipe.inspect(rec.name, store=store)
    assert len(details.manifests) == 1
    got = details.manifests[0].platform
    assert got is not None and got.architecture == want["architecture"]
    # only that platform's manifest came down
    chosen = {m["digest"] for m in index["manifests"] if m.get("platform") == want}
    others = {m["digest"] for m in index["manifests"]} - chosen
    assert chosen <= _blob_digests(store)
    assert not (others & _blob_digests(store))


def test_pull_all_platforms(seeded: Registry, fixture_dir: Path, store: Store) -> None:
    ref = seeded.ref("fixtures/busybox-multiarch", "busybox-multiarch")
    rec = imgpipe.pull(ref, all_platforms=True, store=store)
    details = imgpipe.inspect(rec.name, store=store)
    assert len(details.manifests) >= 2
    assert Platform.parse("linux/amd64") in {m.platform for m in details.manifests} or all(
        m.platform is not None for m in details.manifests
    )


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_push_every_variant_and_pull_back_identical(
    seeded: Registry, fixture_dir: Path, tmp_path: Path, name: str
) -> None:
    with Store(tmp_path / "a") as a:
        imgpipe.pull(
            f"oci:{fixture_dir / name}:{name}", name="local/" + name, store=a, all_platforms=True
        )
        dest = seeded.ref("pushed/" + name, "v1")
        out = imgpipe.push("local/" + name, dest, store=a)
    assert out.digest == root_digest(fixture_dir / name)
    assert seeded.manifest_digest("pushed/" + name, "v1") == str(out.digest)
    with Store(tmp_path / "b") as b:
        rec = imgpipe.pull(dest, store=b, all_platforms=True)
        assert rec.target.digest == out.digest
        assert list(b.content.verify()) == []
    # skopeo reads it back with the same digest (--all: an index stays an index)
    seeded.skopeo(
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-no-creds",
        f"docker://{dest}",
        f"oci:{tmp_path / 'skopeo'}:x",
    )
    assert root_digest(tmp_path / "skopeo") == out.digest


def test_push_of_a_partly_pulled_index_says_what_is_missing(
    seeded: Registry, fixture_dir: Path, store: Store
) -> None:
    name = "busybox-multiarch"
    imgpipe.pull(f"oci:{fixture_dir / name}:{name}", name="partial", store=store)
    with pytest.raises(imgpipe.FailedPrecondition, match="--all-platforms"):
        imgpipe.push("partial", seeded.ref("partial/ma", "1"), store=store)


def test_push_by_digest(seeded: Registry, fixture_dir: Path, store: Store) -> None:
    imgpipe.pull(f"oci:{fixture_dir / 'busybox'}:busybox", name="bb", store=store)
    digest = root_digest(fixture_dir / "busybox")
    out = imgpipe.push("bb", f"{seeded.host}/bydigest/bb@{digest}", store=store)
    assert out.digest == digest
    assert seeded.manifest_digest("bydigest/bb", str(digest)) == str(digest)
    other = root_digest(fixture_dir / "layered")
    with pytest.raises(imgpipe.DigestMismatch):
        imgpipe.push("bb", f"{seeded.host}/bydigest/bb2@{other}", store=store)


def test_cross_repository_mount_is_used(seeded: Registry, store: Store) -> None:
    src = seeded.ref("fixtures/layered", "layered")
    rec = imgpipe.pull(src, store=store)
    label_key = f"containerd.io/distribution.source.{seeded.host}"
    config = imgpipe.inspect(rec.name, store=store).manifests[0].manifest.config
    assert store.db.content_labels(config.digest)[label_key] == "fixtures/layered"
    events: list[Event] = []
    imgpipe.push(rec.name, seeded.ref("mounted/layered", "m"), store=store, observer=events.append)
    mounted = [
        e
        for e in events
        if e.kind == EventKind.BLOB_EXISTS and e.detail == "mounted from fixtures/layered"
    ]
    layers = imgpipe.inspect(rec.name, store=store).manifests[0].manifest.layers
    assert {e.digest for e in mounted} == {config.digest, *(la.digest for la in layers)}
    assert not [
        e
        for e in events
        if e.kind == EventKind.BLOB_START and not e.media_type.endswith("manifest.v1+json")
    ]
    status, _, _ = seeded.request("HEAD", f"/v2/mounted/layered/blobs/{layers[0].digest}")
    assert status == 200


def test_chunked_upload_path(
    seeded: Registry,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    """Blobs over the threshold go up in PATCH chunks; the registry assembles them."""
    from imgpipe.formats.reference import parse_reference

    imgpipe.pull(f"oci:{fixture_dir / 'layered'}:layered", name="chunky", store=store)
    plan_layers = imgpipe.inspect("chunky", store=store).manifests[0].manifest.layers
    big = max(plan_layers, key=lambda d: d.size)
    assert big.size > 3000
    proxy = fault_proxy(seeded)  # to count the requests
    ref = parse_reference(proxy.ref("chunked/layered", "c"))
    chunk = big.size // 3 + 1  # three PATCHes, the last one short
    with RegistrySink(ref, chunk_threshold=1000, chunk_size=chunk) as sink:
        assert not sink.has_blob(big)
        with store.content.open(big.digest) as f:
            sink.write_blob(big, f)
        assert sink.has_blob(big)
    assert len(proxy.log("/blobs/uploads/", method="PATCH")) == 3
    puts = proxy.log("/blobs/uploads/", method="PUT")
    assert len(puts) == 1 and f"digest={big.digest}".replace(":", "%3A") in puts[0].path
    status, headers, _ = seeded.request("HEAD", f"/v2/chunked/layered/blobs/{big.digest}")
    assert status == 200 and int(headers["content-length"]) == big.size
    # small blobs take one PUT with the bytes (monolithic)
    proxy.reset_counters()
    small = imgpipe.inspect("chunky", store=store).manifests[0].manifest.config
    with RegistrySink(ref) as sink, store.content.open(small.digest) as f:
        sink.write_blob(small, f)
    assert proxy.log("/blobs/uploads/", method="PATCH") == []
    assert len(proxy.log("/blobs/uploads/", method="PUT")) == 1


def test_missing_tag_and_repo_are_not_found(seeded: Registry, store: Store) -> None:
    with pytest.raises(NotFound, match=r"fixtures/busybox:nope"):
        imgpipe.pull(seeded.ref("fixtures/busybox", "nope"), store=store)
    with pytest.raises(NotFound):
        imgpipe.pull(seeded.ref("no/such", "x"), store=store)


def test_connection_refused_is_unavailable(store: Store) -> None:
    from registry_fixtures import free_port

    with pytest.raises(Unavailable, match="connection refused"):
        imgpipe.pull(f"127.0.0.1:{free_port()}/a/b:c", store=store)


def test_basic_auth_over_tls_with_auth_file(
    registry_basic_tls: Registry, fixture_dir: Path, tmp_path: Path, store: Store
) -> None:
    reg = registry_basic_tls
    reg.push_layout(fixture_dir / "busybox", "busybox", "basic/busybox", "1")
    ref = reg.ref("basic/busybox", "1")
    # no CA: refused with a hint; never a fall back to HTTP
    with pytest.raises(Unavailable, match="--tls-ca"):
        imgpipe.pull(ref, store=store, options=TransportOptions(auth_file=str(tmp_path / "none")))
    # CA but no credentials: unauthorized
    no_creds = TransportOptions(tls_ca=str(reg.ca_file), auth_file=str(tmp_path / "none"))
    with pytest.raises(Unauthorized, match="authentication required"):
        imgpipe.pull(ref, store=store, options=no_creds)
    opts = TransportOptions(tls_ca=str(reg.ca_file), auth_file=str(reg.auth_file(tmp_path)))
    rec = imgpipe.pull(ref, store=store, options=opts)
    assert rec.target.digest == root_digest(fixture_dir / "busybox")
    out = imgpipe.push(rec.name, reg.ref("basic/pushed", "2"), store=store, options=opts)
    assert reg.manifest_digest("basic/pushed", "2") == str(out.digest)


def test_token_auth_anonymous_pull_and_authenticated_push(
    registry_token: Registry, fixture_dir: Path, tmp_path: Path, store: Store
) -> None:
    reg = registry_token
    assert reg.token_server is not None
    reg.push_layout(fixture_dir / "busybox", "busybox", "tok/busybox", "1")
    anon = TransportOptions(auth_file=str(tmp_path / "none"))
    rec = imgpipe.pull(reg.ref("tok/busybox", "1"), store=store, options=anon)
    assert rec.target.digest == root_digest(fixture_dir / "busybox")
    anon_requests = [r for r in reg.token_server.log if r.account == "" and r.status == 200]
    assert any("repository:tok/busybox:pull" in r.scopes for r in anon_requests)
    # anonymous push is refused by the registry (the token grants pull only)
    with pytest.raises(Unauthorized):
        imgpipe.push(rec.name, reg.ref("tok/anon", "1"), store=store, options=anon)
    auth = TransportOptions(auth_file=str(reg.auth_file(tmp_path)))
    out = imgpipe.push(rec.name, reg.ref("tok/pushed", "1"), store=store, options=auth)
    assert reg.manifest_digest("tok/pushed", "1") == str(out.digest)
    posts = [r for r in reg.token_server.log if r.method == "POST" and r.status == 200]
    assert any("repository:tok/pushed:pull,push" in r.scopes for r in posts)


def test_cli_pull_and_push(seeded: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    p = run_cli("pull", "--json", seeded.ref("fixtures/busybox", "busybox"), root=root)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines[-1]["event"] == "result"
    assert any(e["event"] == "blob.done" for e in lines)
    name = lines[-1]["name"]
    p = run_cli("push", name, f"docker://{seeded.ref('cli/busybox', 'x')}", root=root)
    assert p.returncode == 0, p.stderr
    assert seeded.manifest_digest("cli/busybox", "x") == p.stdout.split()[-1]


def test_cli_errors_are_one_line_with_exit_codes(seeded: Registry, tmp_path: Path) -> None:
    p = run_cli("pull", seeded.ref("fixtures/busybox", "missing"), root=tmp_path / "r")
    assert p.returncode == 5
    assert p.stderr.count("\n") == 1 and "fixtures/busybox:missing" in p.stderr


class _Schema1Registry(http.server.BaseHTTPRequestHandler):
    """Serves only schema 1 manifests, as old registries still do for old images: one
    labelled as such, one labelled ``application/json`` (found by its content)."""

    protocol_version = "HTTP/1.1"
    BODY = json.dumps(
        {
            "schemaVersion": 1,
            "name": "old/img",
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
            "history": [],
        }
    ).encode()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        typed = self.path.startswith("/v2/old/typed/")
        self.send_response(200)
        self.send_header(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
            if typed
            else "application/json",
        )
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if body:
            self.wfile.write(self.BODY)

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_GET(self) -> None:
        self._answer(True)


def test_schema1_is_refused_with_a_clear_message(store: Store) -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Schema1Registry)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        host = f"127.0.0.1:{srv.server_address[1]}"
        for repo in ("old/typed", "old/untyped"):
            with pytest.raises(Unsupported, match=f"{repo}:v1: Docker image manifest schema 1"):
                imgpipe.pull(
                    f"{host}/{repo}:v1", store=store, options=TransportOptions(plain_http=True)
                )
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def test_a_manifest_put_the_registry_calls_digest_invalid_is_retried(
    seeded: Registry,
    fixture_dir: Path,
    store: Store,
    fault_proxy: Callable[[Registry], FaultProxy],
) -> None:
    """distribution's filesystem driver rewrites a blob's link in place, so a manifest
    PUT racing another push of the same blob may be refused as DIGEST_INVALID although
    its bytes are right: pushed again (twice at most), it lands; a third refusal stands."""
    imgpipe.pull(f"oci:{fixture_dir / 'busybox'}:busybox", name="bb", store=store)
    digest = root_digest(fixture_dir / "busybox")
    proxy = fault_proxy(seeded)
    proxy.fail("/manifests/", method="PUT", status=400, code="DIGEST_INVALID", times=2)
    out = imgpipe.push("bb", proxy.ref("race/bb", "1"), store=store)
    assert out.digest == digest
    puts = proxy.log("/manifests/", method="PUT")
    assert [p.status for p in puts[:3]] == [400, 400, 201]  # the first document, thrice
    assert seeded.manifest_digest("race/bb", "1") == str(digest)

    proxy.reset_counters()
    proxy.fail("/manifests/", method="PUT", status=400, code="DIGEST_INVALID", times=3)
    with pytest.raises(imgpipe.DigestMismatch, match="DIGEST_INVALID"):
        imgpipe.push("bb", proxy.ref("race/bb", "2"), store=store)
    assert len(proxy.log("/manifests/", method="PUT")) == 3
