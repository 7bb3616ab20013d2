"""`uti verify`: passes on a good dataset; each kind of damage (on a copy) fails exactly its own check,
naming the shard and the sample; report.html carries the plots; baselines gate; CLI exit codes.

One small dataset per module (one codec load) and one Ray instance per module keep this file fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cli_helpers import uti_in_process
from demo.run import verify_failure_message
from uti.errors import ConfigError
from uti.token_space import canonical_json
from verify import CHECKS, VerifyConfig, run_verify
from verify_helpers import (  # noqa: F401 - ray_address is a fixture
    build_dataset, other_token_space, ray_address, read_raw, reindex, rewrite_shard, shard_with, verify_quick,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def good(tmp_path_factory, default_tokenizer):
    return build_dataset(tmp_path_factory.mktemp("verify") / "good", tokenizer=default_tokenizer)


@pytest.fixture(scope="module")
def good_run_console(good, ray_address, tmp_path_factory):
    """The full run on the good dataset: every sample decoded and re-encoded, and a baseline written; and what
    it printed on a stderr that is not a terminal (as under ray job submit or CI), with progress lines at most
    1 us apart (every event prints one)."""
    base = tmp_path_factory.mktemp("baseline") / "baseline.json"
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        result = run_verify(VerifyConfig(out=str(good.out), decode_fraction=1.0, retokenize_fraction=1.0,
                                         max_seq_len=4096, write_baseline=str(base)), progress_every=1e-6)
    return result, base, console.getvalue()


@pytest.fixture(scope="module")
def good_run(good_run_console):
    return good_run_console[:2]


def copy_of(good, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good.out, out, ignore=shutil.ignore_patterns("verify"))
    return out


def assert_only(result, failing: set[str], check: str, *, shard: str, key: str | None = None, id: str | None = None):
    """Exactly `failing` hard checks failed; `check`'s first failure names shard (and sample), in report.json too."""
    on_disk = json.loads(result.json_path.read_text())
    assert result.exit_code == 1 and on_disk["ok"] is False
    assert set(on_disk["failed_hard"]) == failing, [c["first_failure"] for c in on_disk["checks"] if not c["ok"]]
    message = verify_failure_message(result)  # what `uti demo` prints when its verify stage fails
    assert all(name in message for name in failing) and str(result.json_path) in message, message
    first = next(c for c in on_disk["checks"] if c["name"] == check)["first_failure"]
    assert first["shard"] == shard, first
    if key is not None:
        assert (first["key"], first["id"]) == (key, id), first
    assert first["detail"]
    return next(c for c in on_disk["checks"] if c["name"] == check)


# ---- the good dataset -----------------------------------------------------------------------------------
def test_good_dataset_passes_every_check(good, good_run):
    result, _ = good_run
    report = json.loads(result.json_path.read_text())
    assert result.ok and result.exit_code == 0 and report["failed_hard"] == []
    assert report["token_space_id"] == good.space.id
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert all(status[n] == "PASS" for n in ("token_space", "token_ranges", "shapes", "shard_integrity",
                                              "reconciliation", "split_integrity", "decode", "retokenize", "loader"))
    assert status["baseline"] == "SKIP"
    # Random-init codecs on 8 samples use few codes: a soft warning, never a failure.
    assert status["codebook_health"] == "WARN"
    assert report["summary"]["samples"] == len(good.rows) - 1 and report["summary"]["errors"] == 1
    assert result.check("reconciliation")["counts"]["manifests_checked"] == 1
    decode, retok = result.check("decode")["counts"], result.check("retokenize")["counts"]
    assert decode["picked"] == decode["population"] == 8 and decode["decode.audio.ok"] == 4 and decode["decode.image.ok"] == 3
    assert retok["retokenize.audio.exact"] == 4 and retok["retokenize.image.exact"] == 3 and retok["agreement_rate"] == 1.0
    assert report["codec"]["exact_retokenize"] is True
    assert result.check("loader")["counts"]["samples"] == 8
    books = report["codebooks"]
    assert set(books) == {"image"} | {f"audio.l{k}" for k in range(8)}
    assert all(0 < b["utilization"] <= 1 and b["perplexity"] >= 1 for b in books.values())
    assert report["lengths"]["audio.media"]["count"] == 4 and report["lengths"]["image.media"]["mean"] == 256


def test_report_html_embeds_the_plots(good_run):
    result, _ = good_run
    page = result.html_path.read_text()
    assert page.count('<img alt=') == 3 and page.count('src="data:image/png;base64,') == 3
    for title in ("Codebook utilization per level", "Length histograms per modality", "Errors per shard"):
        assert title in page
    assert "token_ranges" in page and "PASS" in page


def test_a_non_terminal_gets_progress_lines_shard_by_shard_and_what_the_checks_wait_for(good_run_console):
    result, _, console = good_run_console
    lines = [line for line in console.splitlines() if line.startswith("uti verify: ")]
    shards = result.report["summary"]["shards"]
    counted = [(int(m[1]), int(m[2])) for m in (re.match(r"uti verify: (\d+)/(\d+) shards checked \(\d+%\), ETA \S+, "
                                                         r"\S+ elapsed", line) for line in lines) if m]
    assert {total for _, total in counted} == {shards} and shards >= 3, console
    done = [d for d, _ in counted]
    assert done == sorted(done) and set(range(1, shards + 1)) <= set(done), done  # one line per shard checked
    assert any(re.search(r"ETA \d+s", line) for line in lines if f"{shards}/{shards}" not in line), lines
    # The codec checks load the codecs for seconds: the lines then say that the run waits for them.
    assert any(line.endswith(("; waiting: codec checks (0/1 tasks done) and the loader smoke test",
                              "; waiting: codec checks (0/1 tasks done)")) for line in lines), lines


# ---- damaged copies: each fails its own check only ------------------------------------------------------------
def test_out_of_range_token(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "image")

    def edit(header, samples):
        target = next(x for x in samples if x.key == s.key)
        target.tokens = target.tokens.copy()
        target.tokens[5] = good.space.vocab_size + 7

    rewrite_shard(out, split, shard, edit)
    check = assert_only(verify_quick(out), {"token_ranges"}, "token_ranges", shard=f"{split}/{shard}",
                        key=s.key, id=s.meta["id"])
    assert "position 5" in check["first_failure"]["detail"] and "outside the vocab" in check["first_failure"]["detail"]


def test_token_on_the_wrong_audio_level(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio")
    level0 = good.space.range("audio.l0")

    def edit(header, samples):
        target = next(x for x in samples if x.key == s.key)
        target.tokens = target.tokens.copy()
        target.tokens[1] = level0.start + 3  # frame 0, level 1 slot holds a level-0 code

    rewrite_shard(out, split, shard, edit)
    check = assert_only(verify_quick(out), {"token_ranges"}, "token_ranges", shard=f"{split}/{shard}",
                        key=s.key, id=s.meta["id"])
    assert "level 1" in check["first_failure"]["detail"] and "audio.l0" in check["first_failure"]["detail"]


def test_shard_header_with_another_token_space(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio")
    other = other_token_space(good.space)

    def edit(header, samples):
        header.update(token_space=other.to_dict(), token_space_id=other.id,
                      codec_fingerprints={m: c.fingerprint for m, c in sorted(other.codecs.items())})

    rewrite_shard(out, split, shard, edit)
    check = assert_only(verify_quick(out), {"token_space"}, "token_space", shard=f"{split}/{shard}")
    assert other.id[:16] in check["first_failure"]["detail"]
    # The samples of that shard are named too: their meta and their header disagree.
    assert {(e["key"], e["id"]) for e in check["examples"] if e["key"]} >= {(s.key, s.meta["id"])}


def test_truncated_tar(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    tar = out / "shards" / "train" / "shard-000001.tar"
    index = json.loads(tar.with_suffix(".json").read_text())
    assert index["num_samples"] == 2
    with tarfile.open(tar) as tf:
        cut = next(m for m in tf.getmembers() if m.name == f"{index['keys'][1]}.tokens.npy")
    tar.write_bytes(tar.read_bytes()[: cut.offset_data + cut.size // 2])  # in the middle of the second sample
    check = assert_only(verify_quick(out), {"shard_integrity"}, "shard_integrity", shard="train/shard-000001",
                        key=index["keys"][1], id=index["ids"][1])
    assert "truncated" in check["first_failure"]["detail"]


def test_an_index_modality_that_disagrees_with_the_meta(good, ray_address, tmp_path):
    """Training reads what a sample is from the index (version 3): verify holds it to the sample's meta."""
    out = copy_of(good, tmp_path)
    split, shard, first = shard_with(out, "audio")
    path = out / "shards" / split / f"{shard}.json"
    index = json.loads(path.read_text())
    i = index["keys"].index(first.key)
    assert index["version"] == 3 and index["modalities"][i] == "audio"
    modalities = list(index["modalities"])
    modalities[i] = "image"
    path.write_bytes(canonical_json(index | {"modalities": modalities}))
    check = assert_only(verify_quick(out), {"shard_integrity"}, "shard_integrity", shard=f"{split}/{shard}",
                        key=index["keys"][i], id=index["ids"][i])
    assert "is 'audio' in its meta, 'image' in the index" in check["first_failure"]["detail"]


def test_tar_without_its_end_marker(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    tar = out / "shards" / "train" / "shard-000002.tar"
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1]
    # Every sample intact, the two zero blocks gone: tarfile alone would call this a normal end.
    tar.write_bytes(tar.read_bytes()[: last.offset_data + -(-last.size // 512) * 512])
    check = assert_only(verify_quick(out), {"shard_integrity"}, "shard_integrity", shard="train/shard-000002")
    assert "end-of-archive marker" in check["first_failure"]["detail"]


def test_index_whose_sha_does_not_match(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    reindex(out, "val", "shard-000000", tar_sha256="0" * 64)
    check = assert_only(verify_quick(out), {"shard_integrity"}, "shard_integrity", shard="val/shard-000000")
    assert "SHA-256" in check["first_failure"]["detail"] and "modified after writing" in check["first_failure"]["detail"]


def test_deleted_tar_with_its_index_left_behind(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    (out / "shards" / "train" / "shard-000001.tar").unlink()
    result = verify_quick(out)
    assert_only(result, {"shard_integrity", "reconciliation"}, "shard_integrity", shard="train/shard-000001")
    check = assert_only(result, {"shard_integrity", "reconciliation"}, "reconciliation", shard="train/shard-000001",
                        key=_key("synth:audio/clip2"), id="synth:audio/clip2")
    assert check["failures"] == 2  # both of its samples are missing


def test_deleted_tar_and_index(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    for suffix in (".tar", ".json"):
        (out / "shards" / "train" / f"shard-000001{suffix}").unlink()
    check = assert_only(verify_quick(out), {"reconciliation"}, "reconciliation", shard="train/shard-000001",
                        key=_key("synth:audio/clip2"), id="synth:audio/clip2")
    assert "in no shard and not in errors.jsonl" in check["first_failure"]["detail"]


def test_sample_duplicated_into_another_split(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    _, train_samples = read_raw(out / "shards" / "train" / "shard-000000.tar")
    leaked = train_samples[0]
    leaked.meta["split"] = "val"  # a consistent copy: only the cross-split view can see it

    rewrite_shard(out, "val", "shard-000001", lambda header, samples: (header, samples + [leaked]))
    result = verify_quick(out)
    check = assert_only(result, {"split_integrity"}, "split_integrity", shard="val/shard-000001",
                        key=leaked.key, id=leaked.meta["id"])
    assert "'train'" in check["first_failure"]["detail"]
    assert result.check("reconciliation")["counts"]["cross_split_copies"] == 1


def test_manifest_row_missing_from_shards_and_errors(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "image", split="train")
    rewrite_shard(out, split, shard, lambda header, samples: (header, [x for x in samples if x.key != s.key]))
    assert_only(verify_quick(out), {"reconciliation"}, "reconciliation", shard=f"{split}/{shard}",
                key=s.key, id=s.meta["id"])


def test_meta_with_wrong_n_frames(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio", split="val")

    def edit(header, samples):
        next(x for x in samples if x.key == s.key).meta["n_frames"] += 1

    rewrite_shard(out, split, shard, edit)
    check = assert_only(verify_quick(out), {"shapes"}, "shapes", shard=f"{split}/{shard}", key=s.key, id=s.meta["id"])
    assert "n_frames" in check["first_failure"]["detail"]


@pytest.mark.parametrize("member", ["symlink", "gnu_long_name", "pickle"])
def test_scan_refuses_members_uti_never_writes(good, tmp_path, member):
    """A hostile tar is refused at the first foreign member (unread), as a shard_integrity failure."""
    import io

    from sharding.format import read_index
    from verify.checks import scan_shard
    from verify.dataset import ShardTask

    out = copy_of(good, tmp_path)
    tar = out / "shards" / "val" / "shard-000001.tar"
    _, samples = read_raw(tar)
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w", format=tarfile.GNU_FORMAT) as tf:
        if member == "symlink":
            info = tarfile.TarInfo("evil.json")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            name = "x" * 120 + ".json" if member == "gnu_long_name" else "evil.pickle"
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"\x80\x04N."))
    raw = tar.read_bytes()
    tar.write_bytes(raw[: _end_of_members(raw)] + extra.getvalue())
    reindex(out, "val", "shard-000001")
    index = read_index(tar.with_suffix(".json"))
    summary = scan_shard(ShardTask("val", "shard-000001", str(tar), str(tar.with_suffix(".json")), index), good.space)
    assert set(summary.findings.counts) == {"shard_integrity"} and not summary.clean
    details = " | ".join(f.detail for f in summary.findings.examples["shard_integrity"])
    assert {"symlink": "plain regular files only", "gnu_long_name": "plain regular files only",
            "pickle": "unexpected member 'evil.pickle'"}[member] in details
    assert len(summary.samples) == len(samples)  # the samples before the foreign member were still checked


def _end_of_members(raw: bytes) -> int:
    """Offset of the end-of-archive blocks of a tar we wrote (so members can be appended after it)."""
    import io

    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        last = tf.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


def _key(id_: str) -> str:
    from sharding.format import sample_key

    return sample_key(id_)


# ---- retokenize and lengths ------------------------------------------------------------------------------------
def test_retokenize_catches_valid_but_wrong_tokens(good, default_tokenizer, tmp_path):
    """Codes swapped inside their own level pass every structural check; only re-encoding sees them."""
    from verify.codec_checks import Pick, run_codec_checks

    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio")

    def edit(header, samples):
        target = next(x for x in samples if x.key == s.key)
        t = target.tokens.copy()
        t[0], t[8] = t[8], t[0]  # level-0 codes of frames 0 and 1
        assert t[0] != t[8]
        target.tokens = t

    index = rewrite_shard(out, split, shard, edit)
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="audio", decode=True, retokenize=True)
    summary = run_codec_checks([pick], {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)},
                               space=good.space, config=None, tokenizer=default_tokenizer)
    assert summary.findings.counts == {"retokenize": 1}
    finding = summary.findings.examples["retokenize"][0]
    assert (finding.shard, finding.key, finding.id) == (f"{split}/{shard}", s.key, s.meta["id"])
    assert "first at position 0 (level 0)" in finding.detail


def test_truncation_risk_is_soft_unless_asked(good, ray_address, tmp_path):
    soft = verify_quick(good.out, max_seq_len=260, report_dir=str(tmp_path / "soft"))
    lengths = soft.check("lengths")
    # images: 256 + 11 caption + 6 specials = 273; clips of 0.45 s and 0.55 s: 272 / 336 media tokens
    assert soft.ok and lengths["status"] == "WARN" and lengths["failures"] == 5
    assert lengths["counts"]["over_max_seq_len"] == {"audio": 2, "image": 3, "text": 0}
    hard = verify_quick(good.out, max_seq_len=260, fail_on_truncation=True, report_dir=str(tmp_path / "hard"))
    first = hard.check("lengths")["first_failure"]
    assert hard.report["failed_hard"] == ["lengths"] and first["shard"] and first["key"] and first["id"]


# ---- what the console and the report say ----------------------------------------------------------------------
def test_console_names_the_errors_jsonl_reasons(good, good_run):
    from verify.report import format_summary

    result, _ = good_run
    row = good.errors[0]
    assert len(good.errors) == 1 and row["stage"] and row["reason"]
    assert result.report["summary"]["errors_by_reason"] == [{"stage": row["stage"], "reason": row["reason"], "count": 1}]
    text = format_summary(result.report)
    assert f"errors.jsonl by stage/reason: 1 {row['stage']}/{row['reason']}" in text


def test_console_names_the_top_five_reasons_and_how_many_more():
    from verify.report import format_summary

    reasons = [{"stage": "read", "reason": f"r{i}", "count": 10 - i} for i in range(7)]
    report = {"dataset": "OUT", "token_space_id": "0" * 64, "checks": [], "failed_hard": [],
              "summary": {"shards": 1, "samples": 3, "errors": 49, "bytes": 0, "seconds": 1.0,
                          "errors_by_reason": reasons}}
    line = next(x for x in format_summary(report).splitlines() if x.startswith("errors.jsonl by"))
    assert line == "errors.jsonl by stage/reason: 10 read/r0, 9 read/r1, 8 read/r2, 7 read/r3, 6 read/r4 (and 2 more reasons)"


def test_codebook_health_leaves_out_modalities_without_samples(default_tokenizer, ray_address, tmp_path):
    """An audio-only dataset in a token space with an image range: no `image: 0.0` utilization."""
    from verify.report import format_summary

    built = build_dataset(tmp_path / "audio-only", tokenizer=default_tokenizer, n_audio=3, n_image=0)
    assert built.space.has_modality("image")
    result = verify_quick(built.out)
    books = result.report["codebooks"]
    assert books and all(level.startswith("audio.") for level in books)
    health = result.check("codebook_health")
    assert set(health["counts"]["utilization"]) == set(books) and health["counts"]["levels"] == len(books)
    assert "image" not in json.dumps(health) and "codebook.image.utilization" not in result.report["baseline_metrics"]
    line = next(x for x in format_summary(result.report).splitlines() if x.split()[1:2] == ["codebook_health"])
    assert "image" not in line and "audio.l" in line, line


def _with_other_image_weights(good, tmp_path: Path) -> Path:
    """A copy whose job.json config names other image weights than the shards were made with: what a
    machine with another copy of the weights loads."""
    out = copy_of(good, tmp_path)
    job = json.loads((out / "job.json").read_text())
    job["config"]["image"]["weights"] = "random:1"
    (out / "job.json").write_text(json.dumps(job))
    return out


def test_weights_mismatch_names_verifys_own_override_flag(good, tmp_path):
    from verify.codec_checks import Pick, run_codec_checks

    out = _with_other_image_weights(good, tmp_path)
    split, shard, s = shard_with(out, "image")
    index = json.loads((out / "shards" / split / f"{shard}.json").read_text())
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="image", decode=True, retokenize=False)
    paths = {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)}
    config = json.loads((out / "job.json").read_text())["config"]
    refused = run_codec_checks([pick], paths, space=good.space, config=config)
    detail = refused.findings.examples["decode"][0].detail
    assert "token space mismatch for loaded image codec" in detail and "--allow-token-space-mismatch" in detail
    assert "explicit override flag" not in detail and refused.overrides == []
    accepted = run_codec_checks([pick], paths, space=good.space, config=config, allow_mismatch=True)
    assert accepted.findings.counts == {} and accepted.counts["decode.image.ok"] == 1
    assert [o["what"] for o in accepted.overrides] == ["loaded image codec"]
    assert accepted.overrides[0]["expected"] == good.space.id and accepted.overrides[0]["found"] != good.space.id


def test_allow_token_space_mismatch_is_recorded_in_report_json(good, ray_address, tmp_path):
    out = _with_other_image_weights(good, tmp_path)
    proc = uti_in_process("verify", str(out), "--address", ray_address, "--decode-fraction", "1",
                          "--retokenize-fraction", "0", "--no-plots", "--loader-batches", "1",
                          "--allow-token-space-mismatch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "verify" / "report.json").read_text())
    assert report["config"]["allow_token_space_mismatch"] is True
    assert [o["what"] for o in report["overrides"]] == ["loaded image codec"]
    decode = next(c for c in report["checks"] if c["name"] == "decode")
    assert decode["status"] == "WARN" and "--allow-token-space-mismatch" in decode["warnings"][0]
    assert "--allow-token-space-mismatch: the codec checks ran with a loaded image codec" in proc.stderr


# ---- baseline ---------------------------------------------------------------------------------------------------
def test_baseline_passes_on_the_same_data_and_names_the_regressed_metric(good, good_run, tmp_path):
    _, base = good_run
    stored = json.loads(base.read_text())
    assert stored["metrics"]["samples.total"] == 8 and "codebook.audio.l3.utilization" in stored["metrics"]
    same = verify_quick(good.out, baseline=str(base), report_dir=str(tmp_path / "same"))
    assert same.ok and same.check("baseline")["status"] == "PASS"
    assert same.check("baseline")["counts"]["metrics_compared"] == len(stored["metrics"])

    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio", split="val")
    rewrite_shard(out, split, shard, lambda header, samples: (header, [x for x in samples if x.key != s.key]))
    worse = verify_quick(out, baseline=str(base))
    gate = worse.check("baseline")
    assert not gate["ok"] and "baseline" in worse.report["failed_hard"]
    assert {"samples.total", "samples.split.val", "samples.modality.audio"} <= set(gate["counts"]["regressed"])
    assert gate["first_failure"]["detail"].split(":")[0] in gate["counts"]["regressed"]

    # A stored utilization far above today's is named by its metric.
    stored["metrics"]["codebook.image.utilization"] = 0.99
    base2 = tmp_path / "higher.json"
    base2.write_text(json.dumps(stored))
    gate2 = verify_quick(good.out, baseline=str(base2), report_dir=str(tmp_path / "higher")).check("baseline")
    assert gate2["counts"]["regressed"] == ["codebook.image.utilization"]
    assert "relative drop" in gate2["first_failure"]["detail"]


# ---- config and CLI ---------------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="decode_fractoin"):
        VerifyConfig.from_dict({"out": "x", "decode_fractoin": 0.1})
    with pytest.raises(ConfigError, match="decode_fraction"):
        VerifyConfig(out="x", decode_fraction=1.5)
    with pytest.raises(ConfigError, match="max_seq_len"):
        VerifyConfig(out="x", fail_on_truncation=True)
    with pytest.raises(ConfigError, match="utilization_rel_drop"):
        VerifyConfig.from_dict({"out": "x", "baseline_limits": {"utilization_rel_drop": -1.0}})


def test_cli_exit_codes(good, ray_address, tmp_path):
    """0 when every hard check passes, 1 when one fails, 2 on a user error (the CLI core maps UTIError)."""
    bad = copy_of(good, tmp_path)
    reindex(bad, "val", "shard-000000", tar_sha256="0" * 64)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    uti = [sys.executable, "-m", "uti.cli", "verify", "--address", ray_address, "--decode-fraction", "0",
           "--retokenize-fraction", "0"]

    # Exit 0 and 1: two commands side by side, each a fresh process as from a user's shell. Exit 2 (user errors,
    # refused before any check runs): the same main() in this process, which saves two interpreter starts.
    ok, failed = _run_side_by_side([
        uti + [str(good.out), "--report-dir", str(tmp_path / "ok")],
        uti + [str(bad)]], env=env)
    missing = uti_in_process(*uti[3:], str(tmp_path / "nope"))
    typo = uti_in_process(*uti[3:], str(good.out), "--decode-fraction", "2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "PASS: every hard check passed" in ok.stdout and (tmp_path / "ok" / "report.html").is_file()

    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "FAIL: shard_integrity" in failed.stdout and "val/shard-000000" in failed.stdout

    assert missing.returncode == 2 and "no such dataset folder" in missing.stderr
    assert typo.returncode == 2 and "--decode-fraction" in typo.stderr


def _run_side_by_side(commands: list[list[str]], *, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd in commands]
    done = []
    for cmd, proc in zip(commands, procs):
        stdout, stderr = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return done
