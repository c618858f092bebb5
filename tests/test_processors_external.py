"""External processor binaries: containerd's stream processor contract, run for real."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import zstandard

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.digest import Digest
from imgpipe.formats.errors import DigestMismatch
from imgpipe.formats.mediatype import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, MediaType
from imgpipe.processors import (
    ExternalProcessor,
    ExternalProcessorConfig,
    ProcessorFailed,
    ProcessorParams,
    ProcessorRegistry,
)
from imgpipe.processors.external import PAYLOAD_TYPE_URL, ProcessStream

DATA = os.urandom(200_000) * 10 + b"tail"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required: apt-get install {'pigz' if 'pigz' in tool else tool}")
    return path


def desc(blob: bytes, mt: str, **annotations: str) -> Descriptor:
    return Descriptor(MediaType(mt), Digest.from_bytes(blob), len(blob), annotations=annotations)


def external(path: str, *args: str, accepts: str = OCI_LAYER_GZIP, env=()) -> ExternalProcessor:  # type: ignore[no-untyped-def]
    return ExternalProcessor(
        ExternalProcessorConfig(
            id="test", accepts=(accepts,), returns=OCI_LAYER, path=path, args=args, env=env
        )
    )


def decode(proc: ExternalProcessor, blob: bytes, d: Descriptor) -> bytes:
    reg = ProcessorRegistry([proc], entry_points=False)
    assert reg.decoder_chain(d.media_type) == [proc]
    with reg.open_decoded(io.BytesIO(blob), d) as out:
        return b"".join(iter(lambda: out.read(1 << 20), b""))


def test_unpigz_as_a_processor() -> None:
    need("unpigz")
    blob = gzip.compress(DATA, mtime=0)
    assert decode(external("unpigz", "-d", "-c"), blob, desc(blob, OCI_LAYER_GZIP)) == DATA


def test_zstd_as_a_processor() -> None:
    need("zstd")
    blob = zstandard.ZstdCompressor().compress(DATA)
    proc = external("zstd", "-dc", accepts=OCI_LAYER_ZSTD)
    assert decode(proc, blob, desc(blob, OCI_LAYER_ZSTD)) == DATA


SCRIPT = """\
import json, os, sys
payload = os.read(3, 1 << 20)
report = {
    "mediatype": os.environ.get("STREAM_PROCESSOR_MEDIATYPE"),
    "extra": os.environ.get("EXTRA"),
    "payload": payload.hex(),
}
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data[::-1])
with open(sys.argv[1], "w") as f:
    json.dump(report, f)
"""


def test_script_processor_sees_the_contract(tmp_path: Path) -> None:
    import json

    script = tmp_path / "proc.py"
    script.write_text(SCRIPT)
    report = tmp_path / "report.json"
    mt = "application/vnd.example.layer.v1.tar+reversed"
    proc = external(sys.executable, str(script), str(report), accepts=mt, env=("EXTRA=yes",))
    blob = DATA[::-1]
    d = desc(blob, mt, **{"org.example": "kept"})
    assert decode(proc, blob, d) == DATA
    seen = json.loads(report.read_text())
    assert seen["mediatype"] == mt and seen["extra"] == "yes"
    payload = bytes.fromhex(seen["payload"])
    # protobuf Any: field 1 the type URL, field 2 the JSON value with the descriptor
    assert payload[0] == 0x0A and PAYLOAD_TYPE_URL.encode() in payload
    value = json.loads(payload[payload.index(b"{") :])
    assert value["Descriptor"]["annotations"] == {"org.example": "kept"}
    assert value["Descriptor"]["digest"] == str(d.digest)
    assert value["DecryptConfig"] == {"Parameters": {}}


def test_failing_processor_surfaces_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        "import sys\nsys.stdin.buffer.read()\n"
        "sys.stderr.write('ctd-decoder: missing private key\\n  for layer\\n')\nsys.exit(3)\n"
    )
    with pytest.raises(ProcessorFailed) as info:
        decode(external(sys.executable, str(script)), b"x", desc(b"x", OCI_LAYER_GZIP))
    assert info.value.returncode == 3
    assert info.value.stderr == "ctd-decoder: missing private key for layer"
    assert str(info.value) == (
        "processor test failed (exit status 3): ctd-decoder: missing private key for layer"
    )


def test_unpigz_on_garbage_fails_with_its_message() -> None:
    need("unpigz")
    with pytest.raises(ProcessorFailed, match="unpigz"):
        decode(external("unpigz", "-d", "-c"), b"not gzip" * 100, desc(b"", OCI_LAYER_GZIP))


def test_missing_binary_is_processor_failed() -> None:
    with pytest.raises(ProcessorFailed, match="cannot run"):
        decode(external("no-such-imgpipe-processor"), b"x", desc(b"x", OCI_LAYER_GZIP))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_closing_early_kills_and_reaps_the_process(tmp_path: Path) -> None:
    script = tmp_path / "endless.py"
    script.write_text("import sys\nwhile True:\n    sys.stdout.buffer.write(b'y' * 65536)\n")
    proc = external(sys.executable, str(script))
    stream = proc.open(io.BytesIO(b"in"), desc(b"in", OCI_LAYER_GZIP), ProcessorParams())
    assert stream.read(1000)
    inner = stream._raw  # the ProcessStream behind the bounds (PassThrough._raw)
    assert isinstance(inner, ProcessStream)
    pid = inner.pid
    stream.close()
    # reaped: the pid is gone, not a zombie (a zombie still answers kill 0)
    assert not _alive(pid)


def test_upstream_error_wins_over_the_process_status(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise DigestMismatch("upstream bytes are corrupt")

    script = tmp_path / "cat.py"
    script.write_text("import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n")
    stream = external(sys.executable, str(script)).open(
        Broken(),  # type: ignore[arg-type]
        desc(b"", OCI_LAYER_GZIP),
        ProcessorParams(),
    )
    with pytest.raises(DigestMismatch, match="upstream"):
        stream.read()
    stream.close()


def test_configured_external_processor_is_used_by_content_get(tmp_path: Path) -> None:
    """End to end: config.toml in $IMGPIPE_CONFIG, `imgpipe content get --decode`."""
    from conftest import IMGPIPE

    need("unpigz")
    import subprocess

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    marker = tmp_path / "ran"
    wrapper = tmp_path / "unpigz-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\ntouch "{marker}"\nexec unpigz -d -c\n')
    wrapper.chmod(0o755)
    (cfg / "config.toml").write_text(
        textwrap.dedent(
            f"""
            [[processors]]
            id = "pigz"
            accepts = ["{OCI_LAYER_GZIP}"]
            returns = "{OCI_LAYER}"
            path = "{wrapper}"
            """
        )
    )
    from imgpipe.store import Store

    blob = gzip.compress(DATA, mtime=0)
    root = tmp_path / "root"
    with Store(root) as s:
        s.content.ingest("t", io.BytesIO(blob), digest=Digest.from_bytes(blob), size=len(blob))
    env = {**os.environ, "IMGPIPE_CONFIG": str(cfg)}
    out = subprocess.run(
        [
            IMGPIPE,
            "--root",
            root,
            "content",
            "get",
            "--decode",
            "--media-type",
            OCI_LAYER_GZIP,
            str(Digest.from_bytes(blob)),
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == DATA
    assert marker.exists()
