"""Image conversion: recompress, re-type, encrypt and decrypt images, store or registry.

::

    report = imgpipe.convert("docker://reg/app:1", "docker://reg/app:1-zstd", compression="zstd")
    report.destination_digest, report.layers[0].after.digest

    with imgpipe.conversion.Converter(options=TransportOptions()) as c:   # many images,
        for tag in tags:                                               # one connection pool
            c.convert(f"reg/app:{tag}", f"reg/app:{tag}-zstd", ConvertOptions(compression="zstd"))

What a conversion does (containerd's converter and imgcrypt are the models):

* **layers**, each through the processor registry (:mod:`imgpipe.conversion.layers`):
  gzip, zstd or uncompressed (``compression``), encrypted for ``recipients`` (the layers
  ``encrypt_layers`` picks, default all), decrypted with ``decrypt_keys``. A layer
  already in the target form passes through byte for byte, never recompressed. A
  recompressed layer is decoded to its tar on the way, and the tar's digest is checked
  against the config's DiffID before the destination commits the layer;
* **seekable layers** (``seekable="estargz"`` or ``"zstdchunked"``): every layer
  rewritten by :mod:`imgpipe.processors.estargz_write` with its TOC annotations
  (``toc.digest``, ``uncompressed-size``, zstd:chunked's manifest checksum/position);
  a layer re-encoded any other way loses them;
* **manifests**: new layer descriptors (digest, size, media type; ocicrypt annotations
  added on encrypt and removed on decrypt). The config blob is rewritten only when a
  layer's tar changed (eStargz adds landmark and TOC entries): the same JSON with the new
  ``rootfs.diff_ids``; compression and encryption alone leave the DiffIDs valid. zstd and encrypted
  layers exist only in OCI manifests, so a Docker manifest that gets one becomes OCI, as
  with ``oci=True`` (Docker -> OCI media types for the manifest, config and layers; the
  config's bytes stay). A manifest whose descriptors did not change keeps its bytes;
* **indexes**: rebuilt for the platforms kept (``platforms``, exact os/arch/variant after
  normalisation; default: every platform the source has; entries without a platform
  are kept), in their order; a Docker list with an OCI child becomes an OCI index.

Sources and destinations: ``docker://REF``, ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``
(and ``docker-archive:FILE`` as a source), ``local:NAME`` for the store, and bare names:

* a bare **source** is the local image of that name when the store has one, else the
  registry reference (``docker://`` forces the registry);
* a bare **destination** is a registry reference when its first component is a host
  (has a ``.`` or ``:``, or is ``localhost``: ``127.0.0.1:5000/app:zstd``), else a local
  name (``app:zstd``); ``local:`` forces the store.

Registry to registry needs no store and no root: each layer streams from the source
through the decoders and encoders into an upload whose digest is named only at the end
(``PUT ?digest=``), ``jobs`` layers at once. Blobs passed through are first looked up
(HEAD) or mounted from the source repository on the same registry; a converted layer
whose result this :class:`Converter` already knows (same source digest, target and
levels) is looked up or mounted too instead of being converted again. The manifests,
the index and last the tag are written only after every blob is in, so a failure never
leaves a tag pointing at half an image (blobs already uploaded stay, untagged, for the
registry's garbage collection).

Reproducibility: the same input and options give the same digests when the encoders
are deterministic, which ours are: gzip (zlib-ng, level pinned, fixed header) and zstd
(libzstd's multi-threaded framing with a pinned job size by default, whose bytes do not
depend on the number of workers, so not on the machine; ``zstd_threads=0`` gives the
single-threaded framing, other bytes). Encryption (a fresh random key and nonce per
layer, by design) is not reproducible.

Errors (exit codes in parentheses): InvalidArgument / InvalidReference (3) for bad
options, MalformedDocument (4), DigestMismatch (8) / SizeMismatch (9) for a corrupt
source (a blob, or a layer whose tar is not what the config says), NotFound (5),
Unauthorized (12) for refused credentials and for encrypted layers without a key that
opens them (NoDecryptionKey), :class:`PushRejected` (13, an Unavailable) when the
destination registry refused or failed the push, Unavailable (13) for an unreachable
source.

Modules, one job each: :mod:`.options` (what to change), :mod:`.locate` (where a name
points), :mod:`.sources` and :mod:`.destinations` (the ends), :mod:`.plan` (the ends
opened, the walk and a plan per layer), :mod:`.layers` (a layer's media types and
converted stream), :mod:`.blobs` (the per-blob work), :mod:`.documents` (manifests and
indexes written), :mod:`.report`, :mod:`.converter` (:class:`Converter`,
:func:`convert`) and :mod:`.stage` (:class:`Convert`, the pipeline stage).

A conversion is a :class:`~imgpipe.pipeline.Pipeline` of three typed stages, Resolve ->
MapLayers -> Write (:mod:`.flow` draws what they hand each other; MapLayers maps each
source Layer to the destination's). It runs with a store only when the destination is
the store, under the pipeline's lease (kept until it expires if the run fails);
registry to registry it opens none.
A stage of your own goes between MapLayers and Write, where every blob is in and nothing
names the image yet::

    class MaxLayer:
        name = "max-layer"
        def run(self, mapped: Mapped, ctx: Context) -> Mapped:
            for r in mapped.results.values():
                if r.layer.descriptor.size > LIMIT:
                    raise imgpipe.ResourceLimit(f"layer {r.layer.descriptor.digest} too big")
            return mapped

    with Converter() as c:
        p = c.pipeline(ConvertOptions(compression="zstd")).insert_after("map-layers", MaxLayer())
        c.run_pipeline(p, c.request("reg.example.com/app:1", "reg.example.com/app:1-zstd"))
"""

from .blobs import LAYER_ATTEMPTS, MapLayers
from .converter import Converter, Root, convert
from .destinations import PushRejected
from .documents import Write
from .flow import Ends, Mapped, MappedLayer, Planned, Request
from .locate import LOCAL_PREFIX, Location, locate
from .options import COMPRESSIONS, DEFAULT_JOBS, ConvertOptions
from .plan import Resolve
from .report import BlobInfo, ConvertReport, LayerReport, ManifestReport
from .stage import Convert

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_JOBS",
    "LAYER_ATTEMPTS",
    "LOCAL_PREFIX",
    "BlobInfo",
    "Convert",
    "ConvertOptions",
    "ConvertReport",
    "Converter",
    "Ends",
    "LayerReport",
    "Location",
    "ManifestReport",
    "MapLayers",
    "Mapped",
    "MappedLayer",
    "Planned",
    "PushRejected",
    "Request",
    "Resolve",
    "Root",
    "Write",
    "convert",
    "locate",
]
