"""Retokenize re-encodes each item with the encode policy its shard header records: exact when those
numerics are verify's own, a per-level agreement gated by --cross-device-agreement when they are not
(never reported as exact), unverifiable (never failed) when verify cannot reproduce the policy; version 1
headers (no policy) keep deciding from job.json's device.

One small dataset per module (one in-process codec load) whose headers are rewritten per test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import uti_in_process
from sharding.format import build_header, header_policy
from uti.token_space import TokenSpace
from verify import VerifyConfig, run_verify
from verify.codec_checks import Pick, run_codec_checks
from verify.policy import RecordedPolicy, encoding_with
from verify_helpers import (  # noqa: F401 - ray_address is a fixture
    build_dataset, ray_address, read_raw, rewrite_shard, shard_with,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def good(tmp_path_factory, default_tokenizer):
    return build_dataset(tmp_path_factory.mktemp("policy") / "good", tokenizer=default_tokenizer)


def copy_of(good, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good.out, out, ignore=shutil.ignore_patterns("verify"))
    return out


def shards(out: Path) -> list[tuple[str, str]]:
    return [(t.parent.name, t.stem) for t in sorted((out / "shards").glob("*/*.tar"))]


def cpu_policies(tok, *, encode_batch: int = 1) -> dict[str, dict]:
    """What a tokenize job on this CPU records, per media modality, at `encode_batch`."""
    out = {}
    for modality, codec in (("audio", tok.audio), ("image", tok.image)):
        with encoding_with(codec, encode_batch):
            out[modality] = codec.encode_policy().to_dict()
    return out


def record(out: Path, policies: dict[str, dict], *, split: str | None = None, tokens=None) -> None:
    """Rewrite the headers of OUT's shards (of `split`, or all) as version 2 headers recording `policies`,
    as sharding.format.build_header writes them; `tokens(sample)` may change a sample's stored tokens."""
    for sp, name in shards(out):
        if split is not None and sp != split:
            continue

        def edit(header, samples):
            new = build_header(token_space=TokenSpace.from_dict(header["token_space"]), shard=header["shard"],
                               split=header["split"], producer=header["producer"], encode_policy=policies)
            for s in samples:
                if tokens is not None and s.meta["modality"] == "audio":
                    s.tokens = tokens(s)
            return new, samples

        rewrite_shard(out, sp, name, edit)


def verify(out: Path, **kw):
    cfg = {"decode_fraction": 0.0, "retokenize_fraction": 1.0, "plots": False, "loader_batches": 1,
           "report_dir": str(out.parent / f"{out.name}-verify"), **kw}
    result = run_verify(VerifyConfig(out=str(out), **cfg))
    return result, json.loads(result.json_path.read_text())


def shift_levels(space: TokenSpace, levels: tuple[int, ...]):
    """Every code of `levels` moved to the next code of its own level: still in range, surely not the
    codec's (what another device's drift on deep levels looks like, exaggerated)."""
    ranges = space.audio_levels
    n_q = len(ranges)

    def change(s) -> np.ndarray:
        t = s.tokens.astype(np.int64).reshape(-1, n_q)
        for k in levels:
            r = ranges[k]
            t[:, k] = r.start + (t[:, k] - r.start + 1) % r.size
        return t.reshape(-1).astype(np.uint32)

    return change


# ---- exact -------------------------------------------------------------------------------------------
def test_a_recorded_cpu_policy_is_re_encoded_exactly(good, default_tokenizer, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    record(out, cpu_policies(default_tokenizer))
    result, report = verify(out)
    retok = result.check("retokenize")
    c = retok["counts"]
    assert result.ok and retok["status"] == "PASS", retok
    assert c["mode"] == "exact" and c["exact"] is True and c["devices"] == {
        "tokenized_on": ["cpu"], "re_encoded_on": ["cpu"], "differ": False}
    assert c["retokenize.audio.exact"] == 4 and c["retokenize.image.exact"] == 3
    assert {p["modality"]: (p["mode"], p["source"], p["encode_batch"]) for p in c["policies"]} == {
        "audio": ("exact", "header", 1), "image": ("exact", "header", 1)}
    assert report["codec"]["exact_retokenize"] is True and report["codec"]["retokenize_mode"] == "exact"
    # One distinct policy: every shard in one group of report.json, and a table in report.html.
    (group,) = report["encode_policies"]
    assert group["header_version"] == 2 and group["shards"] == len(shards(out))
    assert group["encode_policy"]["audio"]["device_type"] == "cpu"
    html = result.html_path.read_text()
    assert "Encode policies" in html and "retokenize mode: <b>exact</b>" in html


def test_tokens_made_at_encode_batch_4_are_re_encoded_at_encode_batch_4(default_tokenizer, ray_address, tmp_path):
    tok = default_tokenizer
    with encoding_with(tok.audio, 4), encoding_with(tok.image, 4):
        built = build_dataset(tmp_path / "b4", tokenizer=tok)
    assert tok.audio.encode_batch == tok.image.encode_batch == 1  # the session's tokenizer is left as it was
    record(built.out, cpu_policies(tok, encode_batch=4))
    result, report = verify(built.out)
    c = result.check("retokenize")["counts"]
    assert result.ok and c["mode"] == "exact" and c["retokenize.audio.exact"] == 4
    for p in c["policies"]:  # the codec re-encoded at the recorded 4, with the padding rule that goes with it
        assert p["encode_batch"] == 4 and p["here"]["encode_batch"] == 4
        assert p["here"]["padding"] == p["recorded"]["padding"] != "none: one item per forward pass at its own length"


def test_altered_tokens_under_an_exact_policy_fail_naming_shard_sample_position_and_level(good, default_tokenizer,
                                                                                          tmp_path):
    out = copy_of(good, tmp_path)
    policies = cpu_policies(default_tokenizer)
    split, shard, s = shard_with(out, "audio")

    def swap_level_2(sample):
        t = sample.tokens.copy()
        if sample.key == s.key:
            t[2], t[10] = t[10], t[2]  # level-2 codes of frames 0 and 1: in range, but not the codec's
            assert t[2] != t[10]
        return t

    record(out, policies, tokens=swap_level_2)
    header, _ = read_raw(out / "shards" / split / f"{shard}.tar")
    index = json.loads((out / "shards" / split / f"{shard}.json").read_text())
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="audio", decode=False, retokenize=True,
                policy=RecordedPolicy.of(header["version"], header_policy(header), "audio"))
    # exact=False is what job.json would say for a version 1 header: the recorded policy overrides it.
    summary = run_codec_checks([pick], {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)},
                               space=good.space, config=None, tokenizer=default_tokenizer, exact=False)
    assert summary.findings.counts == {"retokenize": 1}
    finding = summary.findings.examples["retokenize"][0]
    assert (finding.shard, finding.key, finding.id) == (f"{split}/{shard}", s.key, s.meta["id"])
    assert "2 of" in finding.detail and "first at position 2 (level 2)" in finding.detail
    assert "recorded encode policy (cpu float32, TF32 off, encode_batch 1)" in finding.detail


# ---- other numerics: agreement -----------------------------------------------------------------------------
def test_cuda_shards_checked_on_cpu_report_agreement_per_level_and_pass_or_fail_on_the_threshold(
        good, default_tokenizer, ray_address, tmp_path):
    """train shards say they were made on cuda (their audio codes drifted on levels 6 and 7), val shards on
    this CPU: each item is compared under its own shard's policy."""
    out = copy_of(good, tmp_path)
    cpu = cpu_policies(default_tokenizer)
    cuda = {m: {**p, "device_type": "cuda"} for m, p in cpu_policies(default_tokenizer, encode_batch=16).items()}
    record(out, cpu, split="val")
    record(out, cuda, split="train", tokens=shift_levels(good.space, (6, 7)))

    passed, report = verify(out, cross_device_agreement=0.7)
    retok = passed.check("retokenize")
    c = retok["counts"]
    assert passed.ok and retok["status"] == "WARN", retok  # a pass, never a plain one
    assert c["mode"] == "mixed" and c["exact"] is False
    assert c["devices"] == {"tokenized_on": ["cpu", "cuda"], "re_encoded_on": ["cpu"], "differ": True}
    groups = {(p["modality"], p["tokenized_on"]): p for p in c["policies"]}
    audio = groups[("audio", "cuda")]
    assert audio["mode"] == "agreement" and audio["encode_batch"] == 16 and audio["agreement"] == pytest.approx(0.75)
    assert audio["per_level"]["audio.l0"] == 1.0 and audio["per_level"]["audio.l6"] == audio["per_level"]["audio.l7"] == 0.0
    assert audio["passed"] is True and audio["threshold"] == 0.7
    assert groups[("image", "cuda")]["agreement"] == 1.0 and groups[("image", "cuda")]["mode"] == "agreement"
    assert groups[("audio", "cpu")]["mode"] == "exact" and groups[("audio", "cpu")]["exact_items"] == 2
    note = next(w for w in retok["warnings"] if w.startswith("audio:"))
    assert note.startswith("audio: tokenized on cuda (encode_batch 16), re-encoded on cpu: agreement 0.75 (level 0: 1.00,")
    assert "level 7: 0.00); not exact (other numerics than the shard's: device_type: 'cuda' != 'cpu')" in note
    assert "retokenize.audio.identical" not in c and c["retokenize.audio.exact"] == 2  # only the val (cpu) clips
    assert report["codec"]["exact_retokenize"] is False and report["codec"]["retokenize_mode"] == "mixed"
    by_device = {g["encode_policy"]["audio"]["device_type"]: g["shards"] for g in report["encode_policies"]}
    assert by_device == {"cuda": len([s for s in shards(out) if s[0] == "train"]),
                         "cpu": len([s for s in shards(out) if s[0] == "val"])}

    # The same dataset under the default threshold (0.80, through the CLI flag's default): a hard failure
    # that names the policy, the agreement and the item that agreed least.
    proc = uti_in_process("verify", str(out), "--address", ray_address, "--decode-fraction", "0",
                          "--retokenize-fraction", "1", "--no-plots", "--loader-batches", "1",
                          "--report-dir", str(tmp_path / "strict"))
    strict = json.loads((tmp_path / "strict" / "report.json").read_text())
    check = next(x for x in strict["checks"] if x["name"] == "retokenize")
    assert proc.returncode == 1 and "retokenize" in strict["failed_hard"] and check["failures"] == 1
    first = check["first_failure"]
    assert first["shard"].startswith("train/") and first["detail"].startswith(
        "audio: tokenized on cuda (encode_batch 16), re-encoded on cpu: agreement 0.75")
    assert "below the cross-device agreement threshold 0.80" in first["detail"]
    assert check["counts"]["threshold"] == 0.8 and check["counts"]["exact"] is False


# ---- policies verify cannot reproduce, and version 1 headers ------------------------------------------------
def test_a_policy_verify_cannot_reproduce_is_unverifiable(good, default_tokenizer, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    cpu = cpu_policies(default_tokenizer)
    record(out, {"audio": {**cpu["audio"], "padding": "time: mirrored to a power of two"}, "image": cpu["image"]})
    result, _ = verify(out)
    retok = result.check("retokenize")
    c = retok["counts"]
    assert result.ok and retok["failures"] == 0 and retok["status"] == "WARN", retok  # never a false FAIL
    assert c["mode"] == "mixed" and c["exact"] is False and c["retokenize.unverifiable"] == 4
    groups = {p["modality"]: p for p in c["policies"]}
    assert groups["audio"]["mode"] == "unverifiable" and groups["audio"]["unverifiable_items"] == 4
    assert "padding rule 'time: mirrored to a power of two'" in groups["audio"]["reason"]
    assert groups["image"]["mode"] == "exact"
    assert any(w.startswith("4 audio item(s) not re-encoded: ") for w in retok["warnings"])


def test_an_edited_preparation_fails_exactly(good, default_tokenizer, ray_address, tmp_path):
    """The header says the images were resized on the device (torch) but they were resized by the reader (PIL):
    verify prepares them as the header says, on the same device type, so the comparison is exact and fails."""
    out = copy_of(good, tmp_path)
    cpu = cpu_policies(default_tokenizer)
    record(out, {"audio": cpu["audio"], "image": {**cpu["image"], "prepare_on": "device"}})
    result, _ = verify(out)
    retok = result.check("retokenize")
    groups = {p["modality"]: p for p in retok["counts"]["policies"]}
    assert groups["image"]["mode"] == "exact" and groups["audio"]["mode"] == "exact"
    assert not result.ok and retok["failures"] >= 1, retok
    assert any("re-encoded tokens differ" in e["detail"] for e in retok["examples"]), retok["examples"]


@pytest.mark.parametrize("edit, why", [
    (lambda p: {**p, "version": 99}, "encode policy version 99 is not supported"),
    (lambda p: {**p, "rounding": "stochastic"}, "unknown encode policy field(s) ['rounding']"),
])
def test_a_policy_of_another_uti_is_unverifiable_without_a_failure(good, default_tokenizer, tmp_path, edit, why):
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio")
    policy = RecordedPolicy.of(2, {"audio": edit(cpu_policies(default_tokenizer)["audio"])}, "audio")
    index = json.loads((out / "shards" / split / f"{shard}.json").read_text())
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="audio", decode=False, retokenize=True,
                policy=policy)
    summary = run_codec_checks([pick], {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)},
                               space=good.space, config=None, tokenizer=default_tokenizer)
    assert summary.findings.counts == {} and summary.counts["retokenize.unverifiable"] == 1
    (tally,) = summary.retokenize.values()
    assert tally.mode.mode == "unverifiable" and why in tally.mode.reason and tally.compared_items == 0


def test_version_1_headers_still_decide_from_job_json(good, ray_address, tmp_path):
    out = copy_of(good, tmp_path)
    result, report = verify(out)
    c = result.check("retokenize")["counts"]
    assert result.ok and c["mode"] == "exact" and c["retokenize.audio.exact"] == 4
    assert {p["source"] for p in c["policies"]} == {"job.json"}
    (group,) = report["encode_policies"]
    assert group["header_version"] == 1 and group["encode_policy"] is None and group["shards"] == len(shards(out))

    job = json.loads((out / "job.json").read_text())  # the same version 1 shards, made on a GPU says job.json
    job["actors"]["device"] = "cuda:0"
    (out / "job.json").write_text(json.dumps(job))
    result, _ = verify(out)
    retok = result.check("retokenize")
    c = retok["counts"]
    assert result.ok and c["mode"] == "agreement" and c["exact"] is False and c["agreement_rate"] == 1.0
    assert "retokenize.audio.exact" not in c and c["retokenize.audio.identical"] == 4
    assert any(w.startswith("audio: tokenized on cuda (job.json actors.device; no encode policy recorded), re-encoded "
                            "on cpu: agreement 1.00") for w in retok["warnings"])


def test_a_version_2_header_without_the_modality_is_compared_by_agreement(good, default_tokenizer, tmp_path):
    """A header that records policies, but none for audio: nobody says which numerics made those codes."""
    out = copy_of(good, tmp_path)
    split, shard, s = shard_with(out, "audio")
    policy = RecordedPolicy.of(2, {"image": cpu_policies(default_tokenizer)["image"]}, "audio")
    index = json.loads((out / "shards" / split / f"{shard}.json").read_text())
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="audio", decode=False, retokenize=True,
                policy=policy)
    summary = run_codec_checks([pick], {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)},
                               space=good.space, config=None, tokenizer=default_tokenizer)
    (tally,) = summary.retokenize.values()
    assert tally.mode.mode == "agreement" and tally.mode.source == "unrecorded" and tally.agreement == 1.0
    assert "records no encode policy for audio" in tally.mode.reason
    assert summary.findings.counts == {} and summary.counts["retokenize.audio.identical"] == 1
