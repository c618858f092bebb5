"""External processor binaries, with containerd's stream processor contract.

A configured processor (``[[processors]]`` in imgpipe's config.toml, read by
``imgpipe.config``) is a program that turns a layer of one of its ``accepts`` media
types into a layer of type ``returns``:

- the layer comes on **stdin** (fed by a thread from the upstream stream), the result
  goes to **stdout**;
- the environment is imgpipe's, plus the configured ``env`` (``KEY=VALUE`` entries), plus
  ``STREAM_PROCESSOR_MEDIATYPE=<input media type>``;
- **fd 3** is a pipe carrying a payload, a protobuf ``google.protobuf.Any``. containerd
  writes one only when the client supplied ``ProcessorPayloads[id]`` (imgcrypt's
  ``ctd-decoder`` fails with "bad file descriptor" without it). We always open fd 3 and
  write the payload containerd's CRI plugin sends in its "node key" model: type URL
  ``io.containerd.ocicrypt.v1.Payload``, value the JSON ``{"DecryptConfig":
  {"Parameters": {}}, "Descriptor": <the layer descriptor>}``. It carries the descriptor
  (with the ocicrypt annotations a decryptor needs) and **no keys**: a decryptor finds
  its keys itself (``ctd-decoder --decryption-keys-path``), and private keys never leave
  this process. Programs that do not care about fd 3 (``unpigz``, ``zstd``) ignore it.
- a non-zero exit is a failure: :class:`~imgpipe.processors.base.ProcessorFailed` with
  the exit status and the program's stderr folded to one line.

If the reader stops early (closes the stream before EOF), the program is killed and
reaped; no process outlives its stream. Output is bounded like any decoder's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Final

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import InvalidArgument
from imgpipe.formats.mediatype import MediaType

from .base import (
    CHUNK_SIZE,
    ChunkReader,
    Direction,
    ProcessorFailed,
    ProcessorParams,
    Readable,
)
from .limits import BoundedReader, CountingReader

__all__ = [
    "MEDIATYPE_ENV",
    "PAYLOAD_FD",
    "PAYLOAD_TYPE_URL",
    "ExternalProcessor",
    "ExternalProcessorConfig",
    "payload_for",
]

#: The environment variable naming the input media type (containerd's name).
MEDIATYPE_ENV: Final = "STREAM_PROCESSOR_MEDIATYPE"
#: The payload's file descriptor in the child (containerd's ExtraFiles[0]).
PAYLOAD_FD: Final = 3
#: imgcrypt's payload type; see the module docstring for why it is the one we send.
PAYLOAD_TYPE_URL: Final = "io.containerd.ocicrypt.v1.Payload"
#: How much of the program's stderr is kept for the error message (its end).
STDERR_TAIL: Final = 4096
#: The message keeps at most this many characters of stderr.
STDERR_MESSAGE_MAX: Final = 500
# Linux lets an unprivileged process grow a pipe to 1 MiB (/proc/sys/fs/pipe-max-size):
# fewer, larger reads of the program's output.
_F_SETPIPE_SZ: Final = 1031
_FD_FLOOR: Final = 10  # our pipe ends live above 0-3, which the child's dup2s target


@dataclass(frozen=True, slots=True)
class ExternalProcessorConfig:
    """One ``[[processors]]`` entry: containerd's ``stream_processors`` fields.

    Raises InvalidArgument when a field is empty or an env entry has no ``=``.
    """

    id: str
    accepts: tuple[str, ...]
    returns: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "accepts", tuple(self.accepts))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", tuple(self.env))
        if not self.id:
            raise InvalidArgument("processor: 'id' must not be empty")
        for name in ("returns", "path"):
            if not getattr(self, name):
                raise InvalidArgument(f"processor {self.id}: {name!r} must not be empty")
        if not self.accepts or not all(self.accepts):
            raise InvalidArgument(f"processor {self.id}: 'accepts' needs media types")
        for entry in self.env:
            if "=" not in entry or entry.startswith("="):
                raise InvalidArgument(f"processor {self.id}: env entry {entry!r} is not K=V")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def payload_for(desc: Descriptor) -> bytes:
    """The fd-3 payload for a layer: a protobuf Any (see the module docstring)."""
    value = json.dumps(
        {"DecryptConfig": {"Parameters": {}}, "Descriptor": desc.to_json()},
        separators=(",", ":"),
    ).encode()
    url = PAYLOAD_TYPE_URL.encode()
    # Any { string type_url = 1; bytes value = 2; }: tags 0x0a and 0x12, length-delimited
    return b"\x0a" + _varint(len(url)) + url + b"\x12" + _varint(len(value)) + value


class ExternalProcessor:
    """Decoder backed by a program; see the module docstring for the contract."""

    direction: Direction = "decode"

    def __init__(self, config: ExternalProcessorConfig) -> None:
        self.config = config
        self.name = config.id
        self._accepts = frozenset(MediaType(a).base for a in config.accepts)

    def __repr__(self) -> str:
        return f"ExternalProcessor({self.config.id!r}, path={self.config.path!r})"

    def accepts(self, media_type: MediaType) -> bool:
        return media_type.base in self._accepts

    def output_type(self, media_type: MediaType) -> MediaType:
        return MediaType(self.config.returns)

    def open(self, stream: BinaryIO, desc: Descriptor, params: ProcessorParams) -> BoundedReader:
        counter = CountingReader(stream)
        try:
            proc = ProcessStream(self.config, counter, desc)
        except BaseException:
            counter.close()
            raise
        return BoundedReader(
            proc, counter, params.limits, what=f"processor {self.config.id} on {desc.digest}"
        )


def _high_fd(fd: int) -> int:
    """``fd`` moved to a close-on-exec descriptor >= _FD_FLOOR (the original is closed)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR)
    os.close(fd)
    return new


class ProcessStream(ChunkReader):
    """The stdout of a running processor program. Closing it kills and reaps the program.

    ``read`` raises ProcessorFailed when the program exits non-zero, or the error that
    stopped the feeder (an upstream DigestMismatch, say) if there was one: that is the
    cause, the program only saw its input end early.
    """

    def __init__(
        self, config: ExternalProcessorConfig, upstream: Readable, desc: Descriptor
    ) -> None:
        super().__init__()
        self._config = config
        self._upstream = upstream
        self._feed_error: BaseException | None = None
        self._status: int | None = None
        env = dict(os.environ)
        env.update(entry.split("=", 1) for entry in config.env)  # type: ignore[misc]
        env[MEDIATYPE_ENV] = str(desc.media_type)

        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _close_inner)
        in_r, in_w = (_high_fd(fd) for fd in os.pipe())
        out_r, out_w = (_high_fd(fd) for fd in os.pipe())
        pl_r, pl_w = (_high_fd(fd) for fd in os.pipe())
        with contextlib.suppress(OSError):
            fcntl.fcntl(out_w, _F_SETPIPE_SZ, CHUNK_SIZE)
        actions = [
            (os.POSIX_SPAWN_DUP2, in_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, self._stderr.fileno(), 2),
            (os.POSIX_SPAWN_DUP2, pl_r, PAYLOAD_FD),
        ]
        try:
            # setsigdef: Python ignores SIGPIPE, and an ignored signal stays ignored across
            # exec; a program writing to a closed stdout should die of it, as from a shell.
            self._pid = os.posix_spawnp(
                config.path,
                [config.path, *config.args],
                env,
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as e:
            for fd in (in_r, in_w, out_r, out_w, pl_r, pl_w):
                os.close(fd)
            self._stderr.close()
            raise ProcessorFailed(
                f"processor {config.id}: cannot run {config.path}: {e.strerror}"
            ) from None
        for fd in (in_r, out_w, pl_r):
            os.close(fd)
        self._out = out_r
        payload = payload_for(desc)
        self._payload_thread = threading.Thread(
            target=_write_all, args=(pl_w, payload), name=f"{config.id}-payload", daemon=True
        )
        self._payload_thread.start()
        self._feeder = threading.Thread(
            target=self._feed, args=(in_w,), name=f"{config.id}-stdin", daemon=True
        )
        self._feeder.start()

    def _feed(self, fd: int) -> None:
        try:
            while True:
                data = self._upstream.read(CHUNK_SIZE)
                if not data:
                    break
                _write(fd, data)
        except BrokenPipeError:
            pass  # the program stopped reading: its exit status tells the rest
        except BaseException as e:
            self._feed_error = e
        finally:
            os.close(fd)

    def _next_chunk(self) -> bytes:
        data = os.read(self._out, CHUNK_SIZE)
        if data:
            return data
        self._feeder.join()
        status = self._reap(kill=False)
        if self._feed_error is not None:
            raise self._feed_error
        if status != 0:
            raise ProcessorFailed(
                f"processor {self._config.id} failed ({_describe(status)})"
                + (f": {tail}" if (tail := self._stderr_tail()) else ""),
                returncode=status,
                stderr=self._stderr_tail(),
            )
        return b""

    def _reap(self, *, kill: bool) -> int:
        if self._status is None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
            _, raw = os.waitpid(self._pid, 0)
            self._status = os.waitstatus_to_exitcode(raw)
        return self._status

    def _stderr_tail(self) -> str:
        f = self._stderr
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - STDERR_TAIL))
        text = " ".join(f.read().decode("utf-8", "replace").split())
        return text[-STDERR_MESSAGE_MAX:]

    @property
    def pid(self) -> int:
        return self._pid

    def _close_inner(self) -> None:
        try:
            self._reap(kill=True)
            os.close(self._out)
            self._feeder.join()
            self._payload_thread.join()
        finally:
            self._stderr.close()
            self._upstream.close()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_all(fd: int, data: bytes) -> None:
    try:
        _write(fd, data)
    except OSError:
        pass  # the program exited or closed fd 3 without reading it: its business
    finally:
        os.close(fd)


def _describe(status: int) -> str:
    return f"killed by signal {-status}" if status < 0 else f"exit status {status}"
