"""The one encrypted-layer authorisation: before any work, every encrypted layer that
will be read must open with the keys given.

imgcrypt's ``CheckAuthorization``: the keys only unwrap the layer's private options, no
layer byte is read, so a missing key fails up front, naming the layer, with nothing
half-done. It is checked even for a layer whose snapshot already exists: having been
unpacked once with a key is no licence to use the image without one (``ctr-enc run``
applies it the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgpipe.formats.descriptor import Descriptor
from imgpipe.formats.errors import DigestMismatch, ImgpipeError, SizeMismatch, Unauthorized

__all__ = ["NO_KEY_MESSAGE", "check_layer_keys", "in_layer", "layer_name"]

#: Said when no key was given at all: the flag that gives one (and nothing about keys
#: that "do not open" it: there were none to try).
NO_KEY_MESSAGE = "encrypted: pass --decrypt-key FILE[:PASSWORD]"


def layer_name(i: int, n: int, desc: Descriptor) -> str:
    """How messages name layer ``i`` (0-based) of ``n``: ``layer 2/3 (sha256:..., type)``."""
    return f"layer {i + 1}/{n} ({desc.digest}, {desc.media_type})"


def in_layer(e: ImgpipeError, where: str) -> ImgpipeError:
    """``e`` with ``where`` in front of its message, same class (exit codes stay right)."""
    msg = f"{where}: {e}"
    if isinstance(e, DigestMismatch):
        return DigestMismatch(msg, expected=e.expected, actual=e.actual)
    if isinstance(e, SizeMismatch):
        return SizeMismatch(msg, expected=e.expected, actual=e.actual)
    try:
        return type(e)(msg)
    except TypeError:  # a subclass with another constructor: keep it as it is
        return e


def _descriptor(layer: Any) -> Descriptor:
    # a model Layer or a plain Descriptor
    return layer if isinstance(layer, Descriptor) else layer.descriptor


def check_layer_keys(layers: Sequence[Any], keys: Sequence[Any]) -> None:
    """Raise Unauthorized (NoDecryptionKey) unless every encrypted layer of ``layers``
    (Layers or Descriptors, base first) opens with one of ``keys`` (DecryptKeys, see
    :func:`imgpipe.processors.ocicrypt.load_private_key`).

    The message names the layer (:func:`layer_name`) and, when no key was given, the
    flag that gives one. Unencrypted images never load the cryptography.
    """
    descs = [_descriptor(layer) for layer in layers]
    for i, desc in enumerate(descs):
        if not desc.media_type.is_encrypted():
            continue
        if not keys:
            raise Unauthorized(f"{layer_name(i, len(descs), desc)}: {NO_KEY_MESSAGE}")
        # imported when needed: cryptography costs ~40 ms of start-up
        from imgpipe.processors.ocicrypt import check_authorization  # noqa: PLC0415

        try:
            check_authorization(desc.annotations, keys=keys)
        except Unauthorized as e:
            raise in_layer(e, f"{layer_name(i, len(descs), desc)} is encrypted") from None
