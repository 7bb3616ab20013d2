"""Chunks are the unit of work, shards the unit of commit, on local Ray (CPU).

One shard of audio and images is cut into chunks that any codec actor encodes; a writer task commits the
shard. Its bytes are the same with one actor and one chunk, two actors, or tiny chunks; an actor killed
mid-run costs only its chunks, and the shard is still byte-identical.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading

import pytest

from ray_jobs.config import TokenizeConfig
from ray_jobs.job import actor_name, run_tokenize
from tokenize_helpers import shard_bytes

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """One split, so the default plan is ONE shard: 10 clips (~14 s of audio), 4 images, a corrupt file."""
    from sharding.manifest import ManifestRow, write_manifest
    from verify_helpers import _write_png, _write_wav

    src = tmp_path_factory.mktemp("chunks-src")
    rows = []
    for i in range(10):
        seconds = 1.0 + 0.2 * i
        path = src / f"clip{i:02d}.wav"
        _write_wav(path, seconds=seconds, rate=(16000, 22050, 44100)[i % 3], channels=1 + i % 2,
                   freq=150.0 * (i + 1), seed=i)
        rows.append(ManifestRow(id=f"ck:a{i:02d}", dataset="ck", modality="audio", path=str(path),
                                captions=(f"tone {i}",), split="train", duration=seconds))
    for i in range(4):
        path = src / f"img{i}.png"
        _write_png(path, size=(40 + 8 * i, 56), seed=i)
        rows.append(ManifestRow(id=f"ck:i{i}", dataset="ck", modality="image", path=str(path),
                                captions=(f"picture {i}",), split="train"))
    (src / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    rows.append(ManifestRow(id="ck:bad", dataset="ck", modality="audio", path=str(src / "bad.wav"),
                            captions=("broken",), split="train", duration=1.0))
    path = src / "m.jsonl"
    write_manifest(path, rows)
    return str(path)


def _cfg(manifest, out, **kw) -> TokenizeConfig:
    return TokenizeConfig(manifests=(manifest,), out=str(out), **{"progress": False, **kw})


@pytest.fixture(scope="module")
def one_actor(ray_session, manifest, tmp_path_factory):
    """The reference: one actor, chunks so large the shard is one chunk."""
    out = tmp_path_factory.mktemp("one") / "out"
    job = run_tokenize(_cfg(manifest, out, num_actors=1, batch_seconds=1000.0, max_images_per_batch=1000))
    assert job["counts"]["shards"]["total"] == 1 and job["counts"]["samples"] == 14
    return out, job


TWO = {"num_actors": 2, "batch_seconds": 3.0, "max_images_per_batch": 2}


@pytest.fixture(scope="module")
def two_actors(ray_session, manifest, tmp_path_factory):
    """Two actors on small chunks, with the console a stderr that is not a terminal gets (ray job submit, CI):
    progress lines at most 1 us apart, so every event the job reports prints one."""
    out = tmp_path_factory.mktemp("two") / "out"
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        job = run_tokenize(_cfg(manifest, out, progress=True, progress_every=1e-6, **TWO))
    return out, job, console.getvalue()


LINE = re.compile(r"^uti tokenize: (\d+)/(\d+) samples encoded \(\d+%\), (.*), shards (\d+)/(\d+) committed, "
                  r"ETA (\S+), \S+ elapsed")


def test_a_non_terminal_gets_progress_lines_that_rise_as_chunks_encode_before_the_shard_commits(two_actors):
    """One shard of several chunks: the count rises chunk by chunk while the shard is still uncommitted (the
    bar and the lines would show 0/N for minutes if they moved only when a shard commits), then the shard commits."""
    _, job, console = two_actors
    lines = [LINE.match(line) for line in console.splitlines() if line.startswith("uti tokenize: ")]
    progress = [(int(m[1]), int(m[2]), m[3], int(m[4]), int(m[5]), m[6]) for m in lines if m]
    assert progress, console
    assert {(total, shards_total) for _, total, _, _, shards_total, _ in progress} == {(15, 1)}
    before_commit = [done for done, _, _, shards, _, _ in progress if shards == 0]
    assert before_commit == sorted(before_commit), before_commit
    assert len({done for done in before_commit if 0 < done < 15}) >= 2, before_commit  # moved chunk by chunk
    assert any(line.startswith("uti tokenize: 15/15 samples encoded") and "shards 0/1 committed" in line
               and line.endswith("; waiting: 1 shard being written") for line in console.splitlines()), console
    assert progress[-1][0] == 15 and progress[-1][3] == 1  # then the shard committed
    figures = progress[len(progress) // 2][2]
    assert re.search(r"\d+\.\d\d h audio", figures) and re.search(r"[\d,]+ tokens/s", figures), figures
    assert any(re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm", eta) for *_, eta in progress), progress


def test_one_shard_is_encoded_by_both_actors_and_bytes_do_not_change(one_actor, two_actors, manifest, tmp_path):
    ref, _ = one_actor
    out, two, _ = two_actors
    # With a whole shard per actor, a one-shard plan would keep the second actor idle (or never start it).
    assert two["actors"]["count"] == 2 and two["counts"]["chunks_encoded"] >= 6, two["counts"]
    assert len(two["actors"]["busy_seconds_by_pid"]) == 2, two["actors"]
    assert two["actors"]["codecs_loaded"] == ["audio", "image", "text"]
    assert two["actors"]["reads_in"] == "actors"  # CPU actors read their own chunks by default (--read-in auto)
    assert shard_bytes(out) == shard_bytes(ref)
    # Read tasks feeding the actors (what GPU actors get) and tiny chunks: still the same bytes.
    tiny = run_tokenize(_cfg(manifest, tmp_path / "tiny", num_actors=2, batch_seconds=0.5, max_images_per_batch=1,
                             read_in="tasks"))
    assert tiny["actors"]["reads_in"] == "tasks"
    assert tiny["counts"]["chunks_encoded"] == 15  # every row alone: the chunk size changes no byte
    assert shard_bytes(tmp_path / "tiny") == shard_bytes(ref)
    assert (tmp_path / "tiny" / "errors.jsonl").read_bytes() == (ref / "errors.jsonl").read_bytes()


def test_an_audio_job_loads_no_image_codec_and_keeps_the_jobs_token_space(one_actor, manifest, tmp_path):
    """Actors load only the codecs the rows need; the token space still names the image codec (its
    descriptor remembered from an earlier load), so audio shards of this job and of a mixed one agree."""
    from sharding.manifest import read_manifest, write_manifest

    audio = tmp_path / "audio.jsonl"
    write_manifest(audio, [r for r in read_manifest(manifest) if r.modality == "audio"])
    job = run_tokenize(_cfg(str(audio), tmp_path / "out", num_actors=1))
    assert job["actors"]["codecs_loaded"] == ["audio", "text"]
    assert job["token_space_id"] == one_actor[1]["token_space_id"]
    assert job["counts"]["samples"] == 10


def test_actor_killed_mid_run_redoes_only_its_chunks(one_actor, two_actors, manifest, tmp_path, ray_session):
    ray = ray_session
    ref, _ = one_actor
    out = tmp_path / "killed"
    result: dict = {}
    sent = _FirstChunkSent()

    def target():
        try:
            result["job"] = run_tokenize(_cfg(manifest, out, **TWO))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    with sent:
        thread.start()
        # Actor 0 is loaded and holds its first chunks (one encoding, one being read) when the log says so.
        assert sent.event.wait(timeout=240) or not thread.is_alive()
        shard = out / "shards" / "train" / "shard-000000.json"
        assert thread.is_alive() and not shard.exists(), "the job finished before the kill"
        ray.kill(_actor(ray, actor_name(str(out), 0)), no_restart=False)
        thread.join(timeout=300)
    assert "job" in result, f"the job did not finish after an actor was killed: {result.get('error')!r}"
    job = result["job"]
    assert job["retries_by_kind"]["chunks"] >= 1, job["retries_by_kind"]
    # Only the killed actor's chunks were encoded again: as many encoded chunks as an undisturbed run.
    assert job["counts"]["chunks_encoded"] == two_actors[1]["counts"]["chunks_encoded"]
    assert shard_bytes(out) == shard_bytes(ref)


class _FirstChunkSent(logging.Handler):
    """Set when the scheduler logs that the first chunk went to a codec actor (the job runs in this process)."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.event = threading.Event()
        self.logger = logging.getLogger("ray_jobs.scheduler")

    def emit(self, record: logging.LogRecord) -> None:
        if "first chunk sent" in record.getMessage():
            self.event.set()

    def __enter__(self):
        self.old_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)


def _actor(ray, name: str):
    try:
        return ray.get_actor(name)
    except ValueError:
        return None
