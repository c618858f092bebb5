"""Examples for every verb's ``--help``: two or three command lines each, with a comment.

A test parses every line with the real parser (a stale option fails it) and checks that
every verb has at least two. Entries for verbs this build does not have are ignored, so
a verb's examples can be written before its module lands.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXAMPLES", "epilog"]

REG: Final = "127.0.0.1:5000"

#: verb path -> (command line without the leading ``imgpipe``, what it does)
EXAMPLES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "pull": (
        ("pull alpine:3.19", "from Docker Hub, this host's platform"),
        (f"pull --platform linux/arm64 {REG}/app:1", "one platform of a local registry's index"),
        ("pull -q --unpack oci:./layout:v1", "an OCI layout, unpacked too, only the result line"),
    ),
    "push": (
        (f"push {REG}/app:1", "to where the name points, as docker push"),
        (f"push app:1 {REG}/team/app:1", "the local image app:1 under another name"),
        ("push app:1 oci-archive:app.tar:1", "into an OCI archive"),
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
    ),
    "inspect": (
        ("inspect alpine", "index, manifests, config and layers of a stored image"),
        ("inspect --json alpine:3.19", "the same as one JSON object"),
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
    ),
    "content get": (
        ("content get sha256:4f5e...ab > layer.tar.gz", "a blob exactly as stored"),
        ("content get --decode sha256:4f5e...ab | tar t", "a layer decoded to its tar"),
    ),
    "content verify": (
        ("content verify", "re-hash every blob; exit 8 if one is corrupt"),
        ("-q content verify", "only the problems, nothing when all is well"),
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
        ("run --name web --net host -e PORT=8080 app:1", "a named container on the host network"),
    ),
    "ps": (
        ("ps", "containers not removed, running or exited"),
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


def epilog(path: str) -> str | None:
    """The ``--help`` epilog of the verb ``path`` ("content ls"): its examples, each
    under its comment, as ``git help`` prints them."""
    rows = EXAMPLES.get(path)
    if not rows:
        return None
    return "examples:\n" + "\n\n".join(f"  # {what}\n  imgpipe {cmd}" for cmd, what in rows)
