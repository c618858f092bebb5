"""The `imgpipe` command end to end, as a subprocess, plus the exit-code table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import after_leases_expire, run_cli

from imgpipe import errors
from imgpipe.cli.exitcodes import EXIT_CODES, EXIT_ERROR, EXIT_INTERNAL, exit_code_for


def test_exit_code_table_is_distinct_and_ordered() -> None:
    codes = [code for _, code in EXIT_CODES]
    assert len(set(codes)) == len(codes)
    assert not {0, 2, EXIT_ERROR, EXIT_INTERNAL, 130} & set(codes)
    # every row is reachable: no earlier row's class is a base of a later row's class
    for i, (cls, code) in enumerate(EXIT_CODES):
        assert exit_code_for(cls("x")) == code, cls
        for earlier, _ in EXIT_CODES[:i]:
            assert not issubclass(cls, earlier), (cls, earlier)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidDigest("x"), 3),
        (errors.InvalidReference("x"), 3),
        (errors.MalformedDocument("x"), 4),
        (errors.NotFound("x"), 5),
        (errors.DigestMismatch("x"), 8),
        (errors.SizeMismatch("x"), 9),
        (errors.Unsupported("x"), 11),
        (errors.ResourceLimit("x"), 14),
        (errors.ImgpipeError("x"), 1),
        (PermissionError(13, "Permission denied"), 1),
        (KeyError("bug"), 70),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_main_says_usage_with_the_tables_code() -> None:
    from imgpipe.cli import exitcodes, main

    assert main.EXIT_USAGE == exitcodes.EXIT_USAGE


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("imgpipe 0.")


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["--version"], "--version"),
        (["--root", "--version", "images"], "images"),  # --root's value, not the flag
        (["-q", "--json", "pull", "--version"], "pull"),
        (["--help", "--version"], "--help"),  # argparse acts on the first it meets
        (["--debug", "--version", "--help"], "--version"),
        (["--", "--version"], None),
        ([], None),
    ],
)
def test_first_word_decides_the_command_line(argv: list[str], word: str | None) -> None:
    from imgpipe.cli.entry import first_word

    assert first_word(argv) == word


def test_the_console_script_answers_version_before_any_parser() -> None:
    """`imgpipe --version` (the installed script: cli/entry.py) prints the version with
    neither typing nor argparse nor the command's parser loaded."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.argv = ['imgpipe', '--root', 'somewhere', '--version']\n"
        "from imgpipe.cli.entry import main\n"
        "code = main()\n"
        "print(code, sorted(m for m in ('typing', 'argparse', 'imgpipe.cli.main') "
        "if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout == "imgpipe " + imgpipe_version() + "\n"
    assert out.stderr.strip() == "0 []"


def imgpipe_version() -> str:
    from imgpipe import __version__

    return __version__


def test_usage_error_exits_2() -> None:
    out = run_cli("no-such-command")
    assert out.returncode == 2


def test_the_parser_loads_no_implementation() -> None:
    """`imgpipe --version` and every start-up build the whole parser: it must not load
    the formats, the error tree or rich (20 ms of imports, measured; see the notes)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from imgpipe.cli.main import build_parser\n"
        "from imgpipe.cli.exitcodes import EXIT_INTERRUPTED, exit_code_for\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('imgpipe.formats', "
        "'imgpipe.errors', 'imgpipe.events', 'rich', 'urllib3'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--version"], set()),
        (["images"], {"sqlite3"}),  # the listing reads metadata.db, nothing more
    ],
)
def test_start_up_loads_only_what_the_verb_uses(
    argv: list[str], allowed: set[str], tmp_path: Path
) -> None:
    """`imgpipe --version` and `imgpipe images` load no registry client (urllib3, ssl),
    no terminal display (rich), no installed-metadata reader and, for --version, no
    SQLite: each costs milliseconds on every command."""
    import ast
    import subprocess
    import sys

    watched = ("urllib3", "ssl", "rich", "sqlite3", "importlib.metadata")
    code = (
        "import sys\n"
        "from imgpipe.cli.main import main\n"
        "try:\n"
        f"    main({['--root', str(tmp_path / 'root'), *argv]!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {watched!r} if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(ast.literal_eval(out.stderr.strip().splitlines()[-1]))
    assert loaded <= allowed, out.stderr


def test_global_options_before_or_after_the_verb(fixture_dir: Path, tmp_path: Path) -> None:
    """docker's habits: `pull -q REF`, `pull --root R REF`, `pull REF --debug`,
    `images -q`, `--json images` all mean what they mean before the verb."""
    src = f"oci:{fixture_dir / 'layered'}:layered"
    root = tmp_path / "a"
    # --root after the verb is the root, not the SOURCE; -q after the source is quiet
    out = ok(run_cli("pull", "--root", root, src, "-q"))
    assert out.stderr == ""
    assert out.stdout.split()[0] == "docker.io/library/layered:latest"
    out = ok(run_cli("pull", src, "--debug", "--root", tmp_path / "b"))
    assert "done" in out.stderr  # not quiet: --debug did not reset it
    # a global option given before the verb is not reset by the verb's parser
    out = ok(run_cli("--root", tmp_path / "c", "-q", "pull", src))
    assert out.stderr == ""
    assert (tmp_path / "c" / "metadata.db").exists()
    for argv in (
        ("images", "-q", "--root", root),
        ("images", "--root", root, "--json"),
        ("--json", "images", "--root", root),
        ("--root", root, "--json", "images"),
        ("content", "ls", "--json", "--root", root),
    ):
        out = ok(run_cli(*argv))
        if "--json" in argv:
            assert isinstance(json.loads(out.stdout), list), argv
            assert len(json.loads(out.stdout)) == (1 if argv[0] != "content" else 6), argv
        else:  # docker's `images -q`: the IDs only, which inspect takes
            (image_id,) = out.stdout.split()
            assert len(image_id) == 12
            assert "layered" in ok(run_cli("inspect", image_id, "--root", root)).stdout
    out = run_cli("inspect", "nosuch", "--debug", "--root", root)
    assert out.returncode == 5
    assert "Traceback" in out.stderr


def test_an_unknown_option_prints_the_verbs_usage() -> None:
    for argv, verb in (
        (("pull", "--bogus", "alpine"), "pull"),
        (("content", "ls", "--bogus"), "content ls"),
        (("images", "-x"), "images"),
        (("--json", "tag", "a", "b"), "tag"),
    ):
        out = run_cli(*argv)
        assert out.returncode == 2, argv
        assert out.stderr.startswith(f"usage: imgpipe {verb} "), out.stderr
        assert f"imgpipe {verb}: error: " in out.stderr
    # bare `run`: only REF is required (CMD is optional)
    out = run_cli("run")
    assert out.returncode == 2
    assert (
        out.stderr.splitlines()[-1]
        == "imgpipe run: error: the following arguments are required: REF"
    )


def test_a_refused_command_line_ends_json_output_with_an_error(fixture_dir: Path) -> None:
    src = f"oci:{fixture_dir / 'layered'}:layered"
    out = run_cli("pull", "--json", "--platform", "linux/amd64", "--all-platforms", src)
    assert out.returncode == 2
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "event": "error",
        "exitCode": 2,
        "message": "--platform and --all-platforms exclude each other",
    }
    assert out.stderr.strip().splitlines() == [
        "imgpipe: error: --platform and --all-platforms exclude each other"
    ]
    # refused by the parser itself: the usage on stderr, and still the JSON error line
    for argv, message in (
        (("pull", "--json"), "imgpipe pull: the following arguments are required: SOURCE"),
        (("--json", "tag", "a", "b"), "imgpipe tag: this command has no --json output"),
        (("images", "--json", "--bogus"), "imgpipe images: unrecognized arguments: --bogus"),
    ):
        out = run_cli(*argv)
        assert out.returncode == 2, argv
        assert out.stderr.startswith("usage: "), out.stderr
        assert out.stdout.splitlines() == [
            json.dumps({"event": "error", "exitCode": 2, "message": message}, separators=(",", ":"))
        ]
    assert run_cli("pull").stdout == ""  # no --json, no JSON


def ok(out: Any) -> Any:
    assert out.returncode == 0, out.stderr
    return out


def test_pull_images_inspect_tag_rmi_gc(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = fixture_dir / "layered"
    pulled = ok(run_cli("pull", f"oci:{layout}:layered", root=root))
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    assert pulled.stdout.split() == ["docker.io/library/layered:latest", digest]
    assert "done" in pulled.stderr  # progress lines go to stderr

    listed = json.loads(ok(run_cli("images", "--json", root=root)).stdout)
    assert [(i["name"], i["digest"]) for i in listed] == [
        ("docker.io/library/layered:latest", digest)
    ]
    blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    assert listed[0]["size"] == blob_bytes
    table = ok(run_cli("images", root=root)).stdout
    assert "docker.io/library/layered:latest" in table and digest in table

    info = json.loads(ok(run_cli("inspect", "--json", "layered", root=root)).stdout)
    assert info["digest"] == digest
    (m,) = info["manifests"]
    assert len(m["layers"]) == len(m["diffIDs"]) == 4
    assert m["cmd"] == ["/bin/sh"]
    assert "Layers:" in ok(run_cli("inspect", "layered", root=root)).stdout

    ok(run_cli("tag", "layered", "example.com/team/layered:v1", root=root))
    names = [i["name"] for i in json.loads(ok(run_cli("images", "--json", root=root)).stdout)]
    assert names == ["docker.io/library/layered:latest", "example.com/team/layered:v1"]

    # removing one name frees nothing: the other still holds the content
    out = ok(run_cli("rmi", "layered", root=root))
    assert "freed 0 B" in out.stdout
    assert ok(run_cli("content", "verify", root=root)).returncode == 0
    out = ok(run_cli("rmi", "example.com/team/layered:v1", root=root))
    assert "(6 blobs)" in out.stdout
    assert json.loads(ok(run_cli("content", "ls", "--json", root=root)).stdout) == []
    assert "freed 0 B" in ok(run_cli("gc", root=root)).stdout


def test_gc_reports_what_it_removes(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    ok(run_cli("rmi", "--no-prune", "busybox", root=root))
    dry = ok(run_cli("gc", "--dry-run", root=root)).stdout
    assert dry.count("would remove sha256:") == 3
    assert len(json.loads(ok(run_cli("content", "ls", "--json", root=root)).stdout)) == 3
    real = ok(run_cli("gc", root=root)).stdout
    assert real.count("removed sha256:") == 3
    assert json.loads(ok(run_cli("content", "ls", "--json", root=root)).stdout) == []


def _one_error_line(out: Any, code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    # progress lines may come first; the error is one line, the last
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("imgpipe: error: ")]
    assert errors == lines[-1:], out.stderr
    return str(lines[-1])


def test_bad_input_gives_one_line_and_distinct_codes(layout_copy: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    # not found
    _one_error_line(run_cli("pull", f"oci:{tmp_path / 'nope'}:x", root=root), 5)
    _one_error_line(run_cli("inspect", "not-there", root=root), 5)
    # invalid reference
    _one_error_line(run_cli("inspect", "UPPER/Case", root=root), 3)
    # corrupt layer
    layout = layout_copy("busybox")
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    line = _one_error_line(run_cli("pull", f"oci:{layout}:busybox", root=root), 8)
    assert blob.name in line
    # malformed index.json
    bad = layout_copy("layered")
    (bad / "index.json").write_text("{not json")
    _one_error_line(run_cli("pull", f"oci:{bad}:layered", root=root), 4)
    # nothing of the failures is named; what they fetched goes when their leases expire
    assert json.loads(ok(run_cli("images", "--json", root=root)).stdout) == []
    after_leases_expire(root)
    assert json.loads(ok(run_cli("content", "ls", "--json", root=root)).stdout) == []


def test_debug_prints_a_traceback(tmp_path: Path) -> None:
    out = run_cli("--debug", "inspect", "missing", root=tmp_path / "root")
    assert out.returncode == 5
    assert "Traceback" in out.stderr


def test_content_verify_finds_corruption(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    blobs = root / "content" / "blobs" / "sha256"
    victim = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[10] ^= 1
    victim.write_bytes(bytes(data))
    out = run_cli("content", "verify", root=root)
    assert out.returncode == 8
    assert victim.name in out.stdout


def test_images_lists_the_others_when_one_is_broken(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    ok(run_cli("pull", f"oci:{fixture_dir / 'layered-zstd'}:layered-zstd", root=root))
    busybox = json.loads(ok(run_cli("inspect", "--json", "busybox", root=root)).stdout)
    ok(run_cli("content", "rm", busybox["digest"], root=root))
    listed = json.loads(ok(run_cli("images", "--json", root=root)).stdout)
    sizes = {i["name"]: i["size"] for i in listed}
    assert sizes["docker.io/library/busybox:latest"] is None
    assert sizes["docker.io/library/layered-zstd:latest"] > 0


def test_rmi_with_an_unknown_name_removes_the_others(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    _one_error_line(run_cli("rmi", "busybox", "no-such-image", root=root), 5)
    assert json.loads(ok(run_cli("images", "--json", root=root)).stdout) == []


def test_closed_stdout_is_not_an_error(fixture_dir: Path, tmp_path: Path) -> None:
    """`imgpipe inspect X | head -0`: the reader goes away; imgpipe stops quietly."""
    import subprocess

    from conftest import IMGPIPE

    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'layered'}:layered", root=root))
    proc = subprocess.Popen(
        [IMGPIPE, "--root", root, "inspect", "layered"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Broken pipe" not in err


def test_push_then_pull_keeps_the_image_name(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'busybox'}:busybox", root=root))
    ok(run_cli("tag", "busybox", "example.com/tools/bb:1", root=root))
    ok(run_cli("push", "example.com/tools/bb:1", f"oci:{tmp_path / 'out'}:latest", root=root))
    out = ok(run_cli("pull", f"oci:{tmp_path / 'out'}:latest", root=tmp_path / "other"))
    assert out.stdout.split()[0] == "example.com/tools/bb:1"


def test_listings_of_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for argv in (("images",), ("ps",), ("snapshots", "ls"), ("content", "ls")):
        out = run_cli(*argv, root=root)
        assert out.returncode == 0, (argv, out.stderr)


def test_rmi_reports_the_snapshots_it_frees(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(run_cli("pull", f"oci:{fixture_dir / 'layered'}:layered", root=root))
    ok(run_cli("unpack", "--snapshotter", "native", "layered", root=root))
    out = ok(run_cli("rmi", "layered", root=root))
    assert "(6 blobs, 4 snapshots)" in out.stdout
    assert ok(run_cli("snapshots", "ls", "--json", root=root)).stdout.strip() == "[]"


def test_a_verbs_own_spelling_of_a_global_option_stays_the_verbs() -> None:
    """A verb may define `-q` as docker's `ps -q` does (IDs only): the finishing pass adds
    only the global spellings it lacks, and the top-level `-q` still means quiet."""
    import argparse

    from imgpipe.cli.parser import add_global_options, finish

    top = argparse.ArgumentParser(prog="t")
    add_global_options(top, top=True)
    sub = top.add_subparsers(dest="command")
    sub.add_parser("ps", help="list").add_argument("-q", dest="ids", action="store_true")
    finish(top)
    args = top.parse_args(["ps", "-q"])
    assert (args.ids, args.quiet) == (True, False)
    args = top.parse_args(["-q", "ps", "--root", "R"])
    assert (args.ids, args.quiet, args.root) == (False, True, "R")
