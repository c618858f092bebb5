"""Every `--json` command's output against docs/json.schema.json, through the real command.

Each command of the schema's ``commands`` table runs here for real (a layout, the real
registry, the store), on success and on failure, and every line or document it prints
must validate. A verb that gains ``--json`` without a row in the schema fails
``test_the_schema_is_valid_and_every_json_verb_is_documented``; the examples of
docs/json.md validate too. ``estargz ls`` needs an eStargz image: its output is checked
against the same schema by its own tests (``check`` here is importable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from registry_fixtures import Registry

from imgpipe.cli.main import build_parser
from imgpipe.cli.parser import has_option, verbs

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA: dict[str, Any] = json.loads((DOCS / "json.schema.json").read_text(encoding="utf-8"))
COMMANDS: dict[str, dict[str, str]] = SCHEMA["commands"]


def validator(pointer: str) -> jsonschema.Draft202012Validator:
    schema = {**SCHEMA, "$ref": pointer}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check(verb: str, stdout: str, returncode: int) -> list[Any]:
    """Validate ``stdout`` of ``verb`` as the schema says; return what it held."""
    (shape, pointer), *_ = COMMANDS[verb].items()
    v = validator(pointer)
    if shape == "document":
        doc = json.loads(stdout)
        v.validate(doc)
        objs = [doc]
    else:
        lines = stdout.splitlines()
        assert lines, f"{verb}: no output"
        objs = [json.loads(line) for line in lines]  # each line one whole object
        for obj in objs:
            v.validate(obj)
        # events, then exactly one final result or error line
        finals = [i for i, o in enumerate(objs) if o["event"] in ("result", "error")]
        assert finals == [len(objs) - 1], stdout
    last = objs[-1]
    if returncode == 0:
        assert not (isinstance(last, dict) and last.get("event") == "error"), stdout
    else:
        # an error line; or a result whose schema allows a failure's code (sync's summary)
        assert isinstance(last, dict), stdout
        assert last["event"] in ("error", "result") and last["exitCode"] == returncode, stdout
    return objs


def json_verbs() -> set[str]:
    return {" ".join(path) for path, _, p in verbs(build_parser()) if has_option(p, "--json")}


def test_the_schema_is_valid_and_every_json_verb_is_documented() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    # a row may come before its verb (another branch's), never a verb without its row
    missing = json_verbs() - set(COMMANDS)
    assert not missing, f"--json verbs without a row in docs/json.schema.json: {missing}"
    for rows in COMMANDS.values():
        for pointer in rows.values():
            validator(pointer)  # every pointer resolves


def test_the_examples_in_json_md_validate() -> None:
    text = (DOCS / "json.md").read_text(encoding="utf-8")
    # an example is a ```json block preceded by a line naming the command: <!-- VERB -->
    blocks = re.findall(r"<!-- example: ([a-z ]+) -->\n```json\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    for verb, body in blocks:
        code = 0
        if COMMANDS[verb].get("lines"):
            last = json.loads(body.strip().splitlines()[-1])
            code = last["exitCode"]
        else:
            doc = json.loads(body)
            code = doc.get("exitCode", 0) if isinstance(doc, dict) else 0
        check(verb, body, code)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("json-keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return d


def test_transfer_verbs_print_events_then_a_result_or_an_error(
    registry: Registry, fixture_dir: Path, keys: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    layout = f"oci:{fixture_dir / 'layered'}:layered"

    def json_run(verb: str, *argv: str | Path, code: int = 0) -> list[Any]:
        out = run_cli(*verb.split(), "--json", *argv, root=root)
        assert out.returncode == code, out.stderr
        return check(verb, out.stdout, out.returncode)

    pulled = json_run("pull", layout)
    assert pulled[-1]["name"] == "docker.io/library/layered:latest"
    assert any(o["event"] == "blob.done" for o in pulled)
    # a registry: the pull, then the pull of a tag that is not there (the 404)
    registry.push_layout(fixture_dir / "busybox", "busybox", "json/busybox", "v1")
    json_run("pull", registry.ref("json/busybox", "v1"))
    missing = json_run("pull", registry.ref("json/busybox", "nosuch"), code=5)
    assert missing[-1]["message"]
    json_run("pull", "--unpack", "--snapshotter", "native", "--name", "unpacked", layout)

    pushed = json_run("push", "layered", f"oci:{tmp_path / 'out'}:1")
    assert pushed[-1]["destination"] == f"oci:{tmp_path / 'out'}:1"
    json_run("push", "nosuch", f"oci:{tmp_path / 'out'}:2", code=5)

    conv = json_run("convert", "--zstd", layout, f"oci:{tmp_path / 'zstd'}:1")
    assert conv[-1]["converted"] == 4
    json_run("encrypt", "--recipient", f"jwe:{keys / 'key.pub'}", layout, "local:enc:1")
    json_run("decrypt", "--key", keys / "key.pem", "local:enc:1", f"oci:{tmp_path / 'dec'}:1")
    json_run("decrypt", "--key", keys / "key.pem", f"oci:{tmp_path / 'none'}:1", "x:1", code=5)
    # a usage error found after parsing is an error line too
    json_run("convert", "--level", "3", layout, "local:x", code=2)

    unpacked = json_run("unpack", "--snapshotter", "native", "layered")
    assert len(unpacked[-1]["layers"]) == 4
    json_run("unpack", "--export", tmp_path / "rootfs", "layered")
    json_run("unpack", "nosuch", code=5)

    if "mount" in json_verbs():  # mount --json prints the snapshot key
        target = tmp_path / "mnt"
        target.mkdir()
        mounted = json_run("mount", "--snapshotter", "native", "layered", target)
        assert mounted[-1]["key"]
        assert run_cli("umount", target, root=root).returncode == 0
        json_run("mount", "nosuch", target, code=5)


def test_documents_print_one_value_or_an_error(fixture_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"

    def doc(verb: str, *argv: str, code: int = 0) -> Any:
        out = run_cli(*verb.split(), "--json", *argv, root=root)
        assert out.returncode == code, out.stderr
        (obj,) = check(verb, out.stdout, out.returncode)
        return obj

    # empty store: empty arrays
    listings = {"images", "content ls", "snapshots ls", "ps", "leases ls"} & json_verbs()
    for verb in sorted(listings):
        assert doc(verb) == [], verb
    r = run_cli("pull", "-q", f"oci:{fixture_dir / 'layered'}:layered", root=root)
    assert r.returncode == 0, r.stderr
    r = run_cli("unpack", "-q", "--snapshotter", "native", "layered", root=root)
    assert r.returncode == 0, r.stderr
    assert [i["name"] for i in doc("images")] == ["docker.io/library/layered:latest"]
    assert len(doc("content ls")) == 6
    assert len(doc("snapshots ls")) == 4
    assert doc("inspect", "layered")["manifests"][0]["cmd"] == ["/bin/sh"]
    assert doc("inspect", "nosuch", code=5)["event"] == "error"
    assert doc("inspect", "UPPER/Case", code=3)["exitCode"] == 3
    assert doc("snapshots ls", "--snapshotter", "native")[0]["snapshotter"] == "native"
