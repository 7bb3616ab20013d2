"""sharding.outdir, the one owner of the OUT folder: round trips of its files on a local folder and on
memory://, a tampered token space refused with the file and the fix, and no other module naming its files."""

from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path

import fsspec
import pytest

from sharding import outdir
from sharding.manifest import ManifestRow
from sharding.plan import make_plan
from sharding.writer import write_shard
from test_shards import make_space  # the suite's small token space
from uti.errors import TokenSpaceError, UTIError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("uti", "sharding", "ray_jobs", "verify", "train", "demo")  # what ships (bench is a script folder)


def tiny_plan(sha: str = "ab" * 32):
    rows = [ManifestRow(id=f"d:{k}", dataset="d", modality="text", path=None, captions=("c",), split="train")
            for k in ("a", "b", "c")]
    return make_plan(rows, manifest_sha256=sha, target_samples=2)


@pytest.fixture(params=["local", "memory"])
def out(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    root = f"memory://uti-outdir-{uuid.uuid4().hex}/out"
    yield root
    fs = fsspec.filesystem("memory")
    fs.rm(root.removeprefix("memory://"), recursive=True)


def test_every_file_round_trips_through_outdir(out):
    space, plan = make_space(), tiny_plan()
    outdir.claim_plan(out, plan)
    outdir.claim_space(out, space)
    outdir.claim_plan(out, plan)  # a rerun of the same plan and space is accepted
    outdir.claim_space(out, space)
    assert outdir.load_space(out) == space
    loaded, sha = outdir.load_plan(out)
    assert loaded == plan and sha == plan.sha256 and outdir.plan_matches(out, plan)
    assert outdir.read_bytes(out, outdir.SPACE_SHA_NAME) == f"{space.id}  token_space.json\n".encode()

    # Errors are rebuilt from the shard indexes: write shards holding only errors, then merge.
    for split, shard in plan.shards():
        errors = [{"id": i, "split": split, "shard": shard.name, "stage": "read", "reason": "unreadable", "detail": "é"}
                  for i in shard.ids]
        write_shard(out, split=split, shard=shard.name, token_space=space, samples=[], errors=errors)
    done = outdir.completed_shards(out, space, plan)
    assert sorted(done) == [("train", "shard-000000"), ("train", "shard-000001")]
    merged = outdir.merge_errors(out, done.values())
    assert [e["id"] for e in merged] == ["d:a", "d:b", "d:c"]
    assert outdir.load_errors(out) == (merged, [])
    assert outdir.read_bytes(out, outdir.ERRORS_NAME) == outdir.errors_bytes(merged)
    assert "é".encode() in outdir.read_bytes(out, outdir.ERRORS_NAME)  # UTF-8, not \\u escapes

    assert not outdir.has_job(out) and outdir.load_job(out) is None
    job = {"format": "uti.job", "counts": {"samples": 0, "errors": 3}, "note": "ünïcode"}
    outdir.write_job(out, job)
    assert outdir.has_job(out) and outdir.load_job(out) == job
    want = json.dumps(job, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert outdir.read_bytes(out, outdir.JOB_NAME) == want.encode()


def test_another_plan_or_space_is_refused(out):
    outdir.claim_plan(out, tiny_plan())
    with pytest.raises(outdir.OutDirError, match="another plan.*manifests hash.*use a new --out"):
        outdir.claim_plan(out, tiny_plan(sha="cd" * 32))
    outdir.claim_space(out, make_space())
    with pytest.raises(UTIError, match="tokens must never be mixed"):
        outdir.claim_space(out, make_space("random:1"))


def test_a_tampered_token_space_is_refused_naming_the_file_and_the_fix(out):
    space = make_space()
    outdir.write_space(out, space)
    raw = outdir.read_bytes(out, outdir.SPACE_NAME)
    # Still canonical JSON, so only the .sha256 comparison can catch it.
    outdir.write_bytes(out, outdir.SPACE_NAME, raw.replace(b'"name":"t"', b'"name":"u"'))
    with pytest.raises(TokenSpaceError) as exc:
        outdir.load_space(out)
    message = str(exc.value)
    assert f"{out}/token_space.sha256" in message and f"{out}/token_space.json" in message, message
    assert "restore both from the same tokenize job" in message, message

    outdir.write_bytes(out, outdir.SPACE_NAME, raw)  # the pair restored: accepted again
    assert outdir.load_space(out) == space
    fs, root = fsspec.core.url_to_fs(out)
    fs.rm(f"{root}/token_space.sha256")
    with pytest.raises(TokenSpaceError, match="token_space.sha256: missing.*travel together"):
        outdir.load_space(out)


def test_train_input_refuses_the_tampered_pair_with_its_flag(tmp_path):
    from train.config import TrainError
    from train.runner import load_input_space

    out = str(tmp_path / "out")
    outdir.write_space(out, make_space())
    outdir.write_bytes(out, outdir.SPACE_SHA_NAME, b"0" * 64 + b"  token_space.json\n")
    with pytest.raises(TrainError, match=r"--data .*token_space.sha256: records '0000.*restore both"):
        load_input_space(out)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are code, not docstrings (f-string pieces included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_module_but_outdir_names_the_out_files():
    """A file name used as a path (the whole literal, or `.../name` in an f-string) outside sharding/outdir.py
    means someone opens OUT's files behind its owner's back. Prose in messages may still mention them."""
    names = ("plan.json", "errors.jsonl", "job.json")
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "sharding" / "outdir.py":
                continue
            for lineno, text in _code_strings(path):
                for name in names:
                    if text == name or text.startswith("/" + name) or text.endswith("/" + name):
                        found.append(f"{path.relative_to(REPO)}:{lineno}: {text!r}")
    assert not found, "use sharding.outdir instead:\n" + "\n".join(found)
