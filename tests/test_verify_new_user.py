"""`uti verify` as a new user meets it: Hugging Face datasets with embedded media, baseline
limits on a dataset that grew or shrank, and what the console and the report say.

One small dataset built through the CLI (`uti manifest --dataset hf`, `uti tokenize`) per module: audio
bytes inside a `save_to_disk` DatasetDict and image bytes inside a parquet file, so every sample's
source is a row of a dataset, never a file of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import uti_in_process
from verify import VerifyConfig
from verify_helpers import ray_address, read_raw, rewrite_shard, shard_with  # noqa: F401 - ray_address is a fixture

pytestmark = pytest.mark.ray

N_AUDIO, N_IMAGE = 4, 3


def uti(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # The environment of the moment: ray.init in this process sets what a CLI joining it with --address needs.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "uti.cli", *args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, f"uti {args[0]}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _wav_bytes(i: int) -> bytes:
    import soundfile as sf

    from uti.assets import synth_audio

    buf = io.BytesIO()
    sf.write(buf, synth_audio("tone", seconds=0.3 + 0.1 * i, sample_rate=16000, seed=i), 16000, format="WAV")
    return buf.getvalue()


def _png_bytes(i: int) -> bytes:
    from PIL import Image

    from uti.assets import synth_image

    buf = io.BytesIO()
    Image.fromarray(synth_image(size=40 + 8 * i, seed=i)).save(buf, format="PNG")
    return buf.getvalue()


def make_hf_sources(base: Path) -> dict[str, bytes]:
    """An audio DatasetDict saved to disk and an image parquet file, media embedded as bytes (their
    `path` fields name files that do not exist). Returns the embedded bytes by their SHA-256."""
    import datasets

    audio = [_wav_bytes(i) for i in range(N_AUDIO)]
    images = [_png_bytes(i) for i in range(N_IMAGE)]

    def audio_split(idx: list[int]) -> datasets.Dataset:
        ds = datasets.Dataset.from_dict({"id": [f"clip{i}" for i in idx],
                                         "audio": [{"bytes": audio[i], "path": f"/elsewhere/{i}.wav"} for i in idx],
                                         "caption": [f"a tone number {i}" for i in idx]})
        return ds.cast_column("audio", datasets.Audio(decode=False))

    datasets.DatasetDict({"train": audio_split([0, 1, 2]), "validation": audio_split([3])}).save_to_disk(
        str(base / "hf_audio"))
    pics = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images],
                                       "caption": [f"a picture {i}" for i in range(N_IMAGE)]})
    pics.cast_column("image", datasets.Image(decode=False)).to_parquet(str(base / "hf_image" / "data" / "train-0.parquet"))
    return {hashlib.sha256(b).hexdigest(): b for b in audio + images}


@pytest.fixture(scope="module")
def hf_out(tmp_path_factory, ray_address):
    """OUT of `uti tokenize` over `uti manifest --dataset hf` manifests, and the embedded bytes by SHA-256."""
    base = tmp_path_factory.mktemp("hf_new_user")
    embedded = make_hf_sources(base)
    out = base / "out"
    # Through the `uti` entry point in this process (no interpreter start each); verify below runs as a command.
    for args in (("manifest", "--dataset", "hf", "--root", str(base / "hf_audio"), "--out", str(base / "audio.jsonl")),
                 ("manifest", "--dataset", "hf", "--root", str(base / "hf_image"), "--out", str(base / "image.jsonl"),
                  "--split-fractions", "train=1"),
                 ("tokenize", "--manifest", str(base / "audio.jsonl"), "--manifest", str(base / "image.jsonl"),
                  "--out", str(out), "--shard-samples", "2", "--num-actors", "1", "--no-progress",
                  "--address", ray_address)):
        proc = uti_in_process(*args)
        assert proc.returncode == 0, f"uti {args[0]}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return out, embedded


@pytest.fixture(scope="module")
def full_run(hf_out, ray_address, tmp_path_factory):
    """`uti verify OUT --retokenize-fraction 1 --decode-fraction 1`, writing a baseline."""
    out, _ = hf_out
    report_dir = tmp_path_factory.mktemp("full_report")
    base = report_dir / "baseline.json"
    proc = uti("verify", str(out), "--address", ray_address, "--retokenize-fraction", "1", "--decode-fraction", "1",
               "--report-dir", str(report_dir), "--write-baseline", str(base), check=False)
    return proc, json.loads((report_dir / "report.json").read_text()), base


def _check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


# ---- item 2: embedded media verify as healthy ---------------------------------------------------------------
def test_hf_embedded_media_pass_full_decode_and_retokenize(hf_out, full_run):
    proc, report, _ = full_run
    assert proc.returncode == 0, [c["first_failure"] for c in report["checks"] if not c["ok"]]
    assert report["failed_hard"] == [] and "PASS: every hard check passed" in proc.stdout
    retok = _check(report, "retokenize")["counts"]
    # Every sample re-encoded from its own bytes in the dataset, token for token; none skipped as missing.
    assert retok["retokenize.audio.exact"] == N_AUDIO and retok["retokenize.image.exact"] == N_IMAGE
    assert retok["agreement_rate"] == 1.0 and "retokenize.source_missing" not in retok
    assert _check(report, "decode")["counts"]["picked"] == N_AUDIO + N_IMAGE


def test_hf_embedded_media_source_hashes_are_of_the_row_bytes(hf_out, full_run):
    """Leakage and source checks key on source_sha256: it must be the row's own bytes, not the folder's."""
    out, embedded = hf_out
    _, report, _ = full_run
    metas = [s.meta for tar in sorted((out / "shards").glob("*/*.tar")) for s in read_raw(tar)[1]]
    assert len(metas) == N_AUDIO + N_IMAGE
    assert {m["source_sha256"] for m in metas} == set(embedded)
    assert all(m["source_ref"]["column"] in ("audio", "image") and Path(m["source"]).is_dir() for m in metas)
    split = _check(report, "split_integrity")
    assert split["status"] == "PASS" and split["counts"]["source_hashes"] == N_AUDIO + N_IMAGE


def test_hf_embedded_media_pass_with_default_settings(hf_out, ray_address, tmp_path):
    out, _ = hf_out
    # In this process (no interpreter start, no torch import): full_run above is the module's fresh `uti verify`.
    proc = uti_in_process("verify", str(out), "--address", ray_address, "--report-dir", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert proc.returncode == 0, [c["first_failure"] for c in report["checks"] if not c["ok"]]
    assert _check(report, "retokenize")["counts"]["retokenize.items"] >= 1


def test_retokenize_notices_changed_embedded_bytes(hf_out, default_tokenizer, tmp_path):
    """The HF row is really read: a sample whose stored hash is not its row's bytes is caught."""
    from verify.codec_checks import Pick, run_codec_checks

    out = tmp_path / "out"
    shutil.copytree(hf_out[0], out, ignore=shutil.ignore_patterns("verify"))
    split, shard, s = shard_with(out, "image")

    def edit(header, samples):
        next(x for x in samples if x.key == s.key).meta["source_sha256"] = "0" * 64

    index = rewrite_shard(out, split, shard, edit)
    pick = Pick(split=split, shard=shard, key=s.key, id=s.meta["id"], modality="image", decode=False, retokenize=True)
    summary = run_codec_checks([pick], {pick.label: (str(out / "shards" / split / f"{shard}.tar"), index)},
                               space=default_tokenizer.space, config=None, tokenizer=default_tokenizer)
    detail = summary.findings.examples["retokenize"][0].detail
    assert "train-0.parquet image[" in detail and "the source changed after tokenizing" in detail


def test_source_references_are_checked_and_stay_inside_their_dataset(hf_out, tmp_path):
    """A sample's `source_ref` is data from a tar: malformed, escaping or vanished references are named
    errors (a vanished dataset counts as a missing source), never a crash or a read outside the dataset."""
    from sharding.media import AudioSpec, load_media, source_row
    from uti.config import LimitsConfig
    from uti.errors import MediaError

    out, _ = hf_out
    _, _, sample = shard_with(out, "image")
    meta = sample.meta
    spec, limits = AudioSpec(sample_rate=24000, channels=1), LimitsConfig()
    assert load_media(source_row(meta), spec=spec, proc_size=64, limits=limits).source_sha256 == meta["source_sha256"]
    cases = {
        "bad_reference": {**meta["source_ref"], "hf_index": "zero"},
        "unreadable": {**meta["source_ref"], "hf_file": "../../outside.parquet"},
        "missing_file": {**meta["source_ref"], "hf_source": str(tmp_path / "moved-away")},
    }
    for reason, ref in cases.items():
        with pytest.raises(MediaError) as info:
            load_media(source_row({**meta, "source_ref": ref}), spec=spec, proc_size=64, limits=limits)
        assert info.value.reason == reason and meta["id"] in str(info.value), (reason, str(info.value))


# ---- item 21: baseline limits -----------------------------------------------------------------------------------
def _edited_baseline(base: Path, path: Path, *, token_space_id: str | None = None, drop: tuple[str, ...] = (),
                     **metrics: float) -> Path:
    """The stored baseline as if written on another version of the dataset (other counts, another space)."""
    stored = json.loads(base.read_text())
    stored["metrics"].update({k.replace("__", "."): v for k, v in metrics.items()})
    for name in drop:
        del stored["metrics"][name]
    if token_space_id is not None:
        stored["token_space_id"] = token_space_id
    path.write_text(json.dumps(stored))
    return path


def _gate(baseline: Path, report: dict, **limits: float) -> dict:
    """The baseline check of this report's metrics against `baseline`, as run_verify computes it."""
    from verify.baseline import compare, load_baseline
    from verify.config import BaselineLimits

    return compare(load_baseline(baseline), report["baseline_metrics"], limits=BaselineLimits(**limits),
                   where=str(baseline), token_space_id=report["token_space_id"]).to_dict()


def test_baseline_passes_a_dataset_that_grew(full_run, tmp_path):
    """The baseline was written when the dataset had 2 train clips fewer and no images."""
    _, report, base = full_run
    now = report["baseline_metrics"]
    older = _edited_baseline(base, tmp_path / "older.json", drop=("samples.modality.image",),
                             samples__total=now["samples.total"] - 2, samples__split__train=now["samples.split.train"] - 2)
    gate = _gate(older, report)
    assert gate["status"] == "PASS" and gate["counts"]["regressed"] == [], gate["examples"]
    # Growth is gated only when asked for.
    capped = _gate(older, report, sample_count_rel_growth=0.1)
    assert set(capped["counts"]["regressed"]) == {"samples.total", "samples.split.train", "samples.modality.image"}


def test_baseline_fails_a_dataset_that_lost_samples_beyond_the_tolerance(full_run, tmp_path):
    """The baseline was written when the dataset had one image more: 8 -> 7 total, 7 -> 6 train, 4 -> 3 images."""
    _, report, base = full_run
    now = report["baseline_metrics"]
    bigger = _edited_baseline(base, tmp_path / "bigger.json", samples__total=now["samples.total"] + 1,
                              samples__split__train=now["samples.split.train"] + 1,
                              samples__modality__image=now["samples.modality.image"] + 1)
    strict = _gate(bigger, report)
    assert strict["status"] == "FAIL"
    assert set(strict["counts"]["regressed"]) == {"samples.total", "samples.split.train", "samples.modality.image"}
    assert "--baseline-tolerance" in strict["first_failure"]["detail"]
    loose = _gate(bigger, report, sample_count_rel_drop=0.3)  # 25% fewer images at most
    assert loose["status"] == "PASS" and loose["counts"]["sample_count_limits"] == {"drop": 0.3, "growth": None}


def test_cli_baseline_tolerance_and_the_token_space_warning(hf_out, full_run, ray_address, tmp_path):
    """On the console: --baseline-tolerance gates losses, and a baseline from another token space is said."""
    out, _ = hf_out
    _, report, base = full_run
    now = report["baseline_metrics"]
    other = _edited_baseline(base, tmp_path / "other.json", token_space_id="f" * 64,
                             samples__total=now["samples.total"] + 1, samples__split__train=now["samples.split.train"] + 1,
                             samples__modality__image=now["samples.modality.image"] + 1)
    proc = uti_in_process("verify", str(out), "--address", ray_address, "--decode-fraction", "0",
                          "--retokenize-fraction", "0", "--baseline", str(other), "--baseline-tolerance", "0.2",
                          "--report-dir", str(tmp_path / "r"))
    gate = _check(json.loads((tmp_path / "r" / "report.json").read_text()), "baseline")
    # 12.5% fewer in total and 14% fewer in train pass a 20% tolerance; 25% fewer images do not.
    assert proc.returncode == 1 and gate["counts"]["regressed"] == ["samples.modality.image"], gate["counts"]
    assert "uti verify: warning: baseline: the baseline was made in token space ffffffffffff" in proc.stderr
    assert "codebook metrics may not be comparable" in proc.stderr


def test_older_two_sided_count_limit_still_applies():
    """`sample_count_rel_change` (the name before --baseline-tolerance) keeps its meaning: both directions."""
    from uti.errors import ConfigError
    from verify.baseline import compare
    from verify.config import BaselineLimits

    base = {"metrics": {"samples.total": 100}, "token_space_id": "a"}
    grown = compare(base, {"samples.total": 120}, limits=BaselineLimits(), where="b", token_space_id="a")
    old = compare(base, {"samples.total": 120}, limits=BaselineLimits(sample_count_rel_change=0.1), where="b",
                  token_space_id="a")
    assert grown.ok and not old.ok and "20.0% more" in old.examples[0].detail
    with pytest.raises(ConfigError, match="not both"):
        BaselineLimits(sample_count_rel_change=0.1, sample_count_rel_drop=0.2)


# ---- item 22 nits ---------------------------------------------------------------------------------------------------
def test_errors_plot_without_errors_starts_at_zero_with_whole_ticks(full_run):
    from verify.report import errors_per_shard_figure

    _, report, _ = full_run
    assert report["summary"]["errors"] == 0 and not report["errors_per_shard"]
    fig = errors_per_shard_figure(report)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert low == 0 and high >= 1
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize("args, flag, field", [
    (["--decode-fraction", "2"], "--decode-fraction: must be in [0, 1]", "decode_fraction"),
    (["--fail-on-truncation"], "--fail-on-truncation needs --max-seq-len", "max_seq_len"),
    (["--max-seq-len", "0"], "--max-seq-len: must be >= 1", "max_seq_len"),
    (["--baseline", "b.json", "--baseline-tolerance", "-1"], "--baseline-tolerance: must be a finite number >= 0",
     "sample_count_rel_drop"),
    (["--baseline-tolerance", "0.1"], "--baseline-tolerance applies to a --baseline gate", "baseline_limits"),
])
def test_cli_errors_name_the_flag_not_the_config_field(capsys, args, flag, field):
    from uti.cli import main

    assert main(["verify", "some-out", *args]) == 2
    err = capsys.readouterr().err
    assert flag in err and field not in err, err


def test_library_errors_keep_the_field_names():
    from uti.errors import ConfigError

    with pytest.raises(ConfigError, match="fail_on_truncation needs max_seq_len"):
        VerifyConfig(out="x", fail_on_truncation=True)
    assert VerifyConfig(out="x").baseline_limits.count_drop == 0.0
