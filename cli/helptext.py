"""Help text :func:`cli.parser.finish` adds to every verb: examples, positionals' help.

``EXAMPLES``: two or three command lines per verb, each with a comment, printed as the
epilog of its ``--help``. A test parses every line with the real parser (a stale option
fails it) and checks that every verb has at least two. Entries for verbs this build does
not have are ignored, so a verb's examples can be written before its module lands.

``ARGUMENTS``: the help of positionals their module defines without one (a ``help=``
given where the argument is defined wins). Kept here rather than in the verbs' modules
so the text of the whole command reads as one; a test checks that every positional of
every verb has help from one place or the other.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ARGUMENTS", "EXAMPLES", "epilog"]

REG: Final = "127.0.0.1:5000"

#: verb path -> (command line without the leading ``imgpipe``, what it does)
EXAMPLES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "pull": (
        ("pull alpine:3.19", "from Docker Hub, this host's platform"),
        (f"pull --platform linux/arm64 {REG}/app:1", "one platform of a local registry's index"),
        ("pull -q --unpack oci:./layout:v1", "an OCI layout, unpacked too, only the result line"),
        (
            f"pull --lazy {REG}/app:esgz",
            "documents, TOCs and prefetched files now; the rest in the background",
        ),
    ),
    "push": (
        (f"push app:1 {REG}/team/app:1", "the local image app:1 to a registry"),
        (f"push {REG}/team/app:1", "no DEST: to where the image's name points"),
        ("push app:1 oci-archive:app.tar:1", "into an OCI archive"),
        ("push --json app:1 oci:out:1", "progress and result as JSON lines (docs/json.md)"),
    ),
    "login": (
        (f"login -u ci --password-stdin {REG}", "the password from stdin (a CI secret)"),
        ("login registry.example.com", "prompt for the user name and password"),
    ),
    "logout": (
        (f"logout {REG}", "forget that registry's credentials"),
        ("logout --auth-file auth.json registry.example.com", "in another credentials file"),
    ),
    "images": (
        ("images", "a table: name, digest, type, size"),
        ("images --json", "one JSON array (docs/json.md)"),
        ("images -q", "the image IDs only, as docker's (inspect and rmi take them)"),
    ),
    "inspect": (
        ("inspect alpine", "index, manifests, config and layers of a stored image"),
        (f"inspect --raw docker://{REG}/team/app:1", "a registry's manifest, nothing stored"),
        ("inspect 8e57442bada8", "by a unique prefix of the image ID (its digest)"),
    ),
    "tag": (
        (f"tag alpine {REG}/base/alpine:3", "a second name for the same image"),
        ("tag app:1 app:stable", "short names are docker.io/library/..."),
    ),
    "rmi": (
        ("rmi alpine", "remove the name, then garbage-collect what only it held"),
        ("rmi --no-prune app:1 app:2", "remove two names, keep the content until a gc"),
    ),
    "content ls": (
        ("content ls", "every blob with its size and labels"),
        ("content ls --json", "as a JSON array"),
        ("content ls --lazy", "the lazy layer caches: bytes on disk, whether in use"),
    ),
    "content get": (
        ("content get sha256:4f5e...ab > layer.tar.gz", "a blob exactly as stored"),
        ("content get --decode sha256:4f5e...ab | tar t", "a layer decoded to its tar"),
    ),
    "content verify": (
        ("content verify", "re-hash every blob; exit 8 if one is corrupt"),
        ("content verify -q", "only the problems, nothing when all is well"),
    ),
    "content rm": (
        ("content rm sha256:4f5e...ab", "remove one blob (gc does this safely)"),
        ("content rm sha256:4f5e...ab sha256:9c1d...07", "several at once"),
    ),
    "gc": (
        ("gc --dry-run", "what would be removed, and the bytes it would free"),
        ("gc", "remove what no image or live lease holds"),
    ),
    "run": (
        ("run --rm alpine echo hello", "pull if needed, run, remove the container after"),
        ("run -it --rm -v $PWD:/src:ro -w /src alpine sh", "an interactive shell on a bind mount"),
        ("run -d --name web --net host -e PORT app:1", "detached, host network, $PORT passed on"),
        (
            f"run --rm --lazy {REG}/app:esgz cat /etc/os-release",
            "start before the image is downloaded (eStargz/zstd:chunked over FUSE)",
        ),
        (
            f"run --rm --lazy --lazy-background=false {REG}/app:esgz ls /",
            "fetch only what the container reads",
        ),
    ),
    "ps": (
        ("ps -a", "running and exited containers, with exit codes"),
        ("ps --json", "as a JSON array with exit codes"),
    ),
    "rm": (
        ("rm web", "remove a stopped container and its snapshot"),
        ("rm -f web worker", "kill running ones first"),
    ),
    "logs": (
        ("logs web", "what a detached container printed"),
        ("logs -f web", "and follow it until it exits"),
    ),
    "stop": (
        ("stop web", "SIGTERM, then SIGKILL after 10 seconds"),
        ("stop -t 2 web", "SIGKILL after 2 seconds"),
    ),
    "wait": (
        ("wait web", "block until it exits; print its exit code"),
        ("wait web worker", "several, one exit code a line"),
    ),
    "convert": (
        (f"convert --zstd {REG}/app:1 {REG}/app:1-zstd", "registry to registry, no local store"),
        ("convert --oci --gzip docker-archive:app.tar oci:out:app", "Docker to OCI, gzip layers"),
        (
            "convert --encrypt-recipient jwe:pub.pem --report r.json app:1 oci:enc:1",
            "encrypt every layer; a JSON report for CI",
        ),
    ),
    "encrypt": (
        (f"encrypt --recipient jwe:pub.pem app:1 {REG}/app:1-enc", "encrypt every layer"),
        ("encrypt --recipient jwe:pub.pem --layers -1 app:1 oci:enc:1", "only the top layer"),
    ),
    "decrypt": (
        (f"decrypt --key key.pem {REG}/app:1-enc app:1-plain", "into the local store"),
        ("decrypt --key key.pem:pass:secret oci:enc:1 oci:plain:1", "a key with a passphrase"),
    ),
    "unpack": (
        ("unpack alpine", "into overlay snapshots (root), reusing layers already there"),
        ("unpack --export rootfs alpine", "a flattened copy in a directory (no root needed)"),
        ("unpack --json --snapshotter native app:1", "the chain IDs as JSON"),
    ),
    "mount": (
        ("mount alpine /mnt/alpine", "a writable rootfs; umount drops the changes"),
        ("mount --read-only app:1 /mnt/app", "a read-only view"),
    ),
    "umount": (
        ("umount /mnt/alpine", "unmount and drop its snapshot"),
        ("umount /mnt/app", "the same for a read-only view"),
    ),
    "snapshots ls": (
        ("snapshots ls", "every snapshotter's snapshots"),
        ("snapshots ls --snapshotter native --json", "one snapshotter's, as JSON"),
    ),
    "snapshots rm": (
        ("snapshots rm sha256:3f1a...c2", "remove one by key (gc removes unused ones safely)"),
        ("snapshots rm --snapshotter btrfs sha256:3f1a...c2", "where the key is ambiguous"),
    ),
    "leases ls": (
        ("leases ls", "leases and when they expire"),
        ("leases ls --json", "as a JSON array"),
    ),
    "leases rm": (
        ("leases rm pull-1a2b3c", "release a lease; gc may then free what it held"),
        ("leases rm pull-1a2b3c convert-4d5e6f", "several at once"),
    ),
    "estargz ls": (
        (f"estargz ls {REG}/app:1-estargz", "every file of every eStargz layer, from the TOCs"),
        (f"estargz ls --layer -1 --json {REG}/app:1-estargz", "the top layer's, as JSON"),
    ),
    "estargz cat": (
        (f"estargz cat {REG}/app:1-estargz /etc/os-release", "one file, fetching only its chunks"),
        ("estargz cat --layer 0 oci:out:1 /bin/busybox > busybox", "from one layer of a layout"),
    ),
    "sync": (
        ("sync plan sync.yaml -o plan.jsonl", "print the plan: every image the spec names"),
        ("sync sync.yaml --executor threads:8 --report report.jsonl", "convert the catalogue"),
    ),
    "report merge": (
        ("report merge shard-0.jsonl shard-1.jsonl", "one summary of a sharded sync"),
        ("report merge --plan plan.jsonl --json shard-*.jsonl", "what is missing, as JSON"),
    ),
    "help": (
        ("help pull", "the same as imgpipe pull --help"),
        ("help content ls", "a subcommand's help"),
    ),
    "completion": (
        ("completion bash > ~/.local/share/bash-completion/completions/imgpipe", "for bash"),
        ('completion zsh > "${fpath[1]}/_imgpipe"', "for zsh (any directory in $fpath)"),
        ("completion bash", 'or in ~/.bashrc: eval "$(imgpipe completion bash)"'),
    ),
}


_WHERE: Final = (
    "a registry reference (alpine, 127.0.0.1:5000/app:1, docker://REF), "
    "oci:DIR[:TAG], oci-archive:FILE[:TAG]"
)

#: "verb dest" -> help of that positional
ARGUMENTS: Final[dict[str, str]] = {
    "pull source": f"where the image is: {_WHERE} or docker-archive:FILE[:REF]",
    "push name": "the stored image",
    "push dest": f"where to write it: {_WHERE}",
    "inspect name": "a stored image: its name",
    "tag source": "the stored image",
    "tag target": "the new name",
    "rmi names": "stored images to remove",
    "content get digest": "the blob's digest (sha256:...)",
    "content rm digests": "the digests of the blobs to remove",
    "login registry": "the registry's host[:port] (default: docker.io)",
    "logout registry": "the registry's host[:port] (default: docker.io)",
    "run image": "a stored image, or a reference to pull first",
    "run command": "the command and its arguments (default: the image's Entrypoint and Cmd)",
    "rm names": "the containers to remove",
    "convert source": "the image to convert (see above)",
    "convert dest": "where the converted image goes",
    "encrypt source": "the image to encrypt (see above)",
    "encrypt dest": "where the encrypted image goes",
    "decrypt source": "the image to decrypt (see above)",
    "decrypt dest": "where the decrypted image goes",
    "unpack name": "a stored image",
    "mount name": "a stored image (unpacked first if needed)",
    "mount target": "an existing directory to mount it on",
    "umount target": "the directory imgpipe mount mounted",
    "snapshots rm keys": "snapshot keys, as snapshots ls shows them",
    "leases rm ids": "lease IDs, as leases ls shows them",
}


def epilog(path: str) -> str | None:
    """The ``--help`` epilog of the verb ``path`` ("content ls"): its examples, each
    under its comment, as ``git help`` prints them."""
    rows = EXAMPLES.get(path)
    if not rows:
        return None
    return "examples:\n" + "\n\n".join(f"  # {what}\n  imgpipe {cmd}" for cmd, what in rows)
