"""uti.audio_decode and the clip windows of sharding.media: m4a (AAC) and opus clips written by PyAV itself
decode to their length, rate and channels, headers give durations without a decode, corrupt files are
per-sample errors naming container and codec, libsndfile formats decode exactly as soundfile does, and a
row's `extra.window` cuts a whole video, takes a cut clip whole, or refuses a file that is neither."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from sharding.datasets.base import audio_duration, window_duration
from sharding.format import build_sample
from sharding.manifest import ManifestRow
from sharding.media import WINDOW, clip_window, load_media, source_meta, source_row
from uti import audio_decode as ad
from uti.config import LimitsConfig
from uti.errors import MediaError
from media_writers import AAC_SLACK, OPUS_SLACK, _signal, m4a, opus, write_clip  # noqa: F401

def _row(path: Path, *, window=None, rid: str = "t:clip") -> ManifestRow:
    return ManifestRow(id=rid, dataset="t", modality="audio", path=str(path), split="train",
                       extra={} if window is None else {WINDOW: window})


def _raw(row: ManifestRow, limits: LimitsConfig | None = None):
    return load_media(row, limits=limits or LimitsConfig(), prepare=False)


def _error(row: ManifestRow, limits: LimitsConfig | None = None) -> MediaError:
    with pytest.raises(MediaError) as info:
        _raw(row, limits)
    return info.value


class CountingReader(io.BytesIO):
    """A file-like that counts the bytes read from it (what an object-store file fetches)."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buf) -> int:
        n = super().readinto(buf)
        self.bytes_read += n
        return n


# ---- m4a and opus ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["m4a", "ogg-opus", "webm-opus"])
def test_clips_written_by_the_library_decode_to_their_length_rate_and_channels(tmp_path, kind):
    if kind == "m4a":
        path, rate, channels, seconds, slack = m4a(tmp_path / "a.m4a", 3.0), 44100, 2, 3.0, AAC_SLACK
    else:
        container, suffix = ("ogg", "opus") if kind == "ogg-opus" else ("webm", "webm")
        path = opus(tmp_path / f"a.{suffix}", 2.0, container=container)
        rate, channels, seconds, slack = 48000, 1, 2.0, OPUS_SLACK
    raw = path.read_bytes()
    decoded = ad.decode(raw)
    expected = round(seconds * rate)
    assert decoded.sample_rate == rate and decoded.data.dtype == np.float32
    assert decoded.data.shape[1] == channels
    assert expected <= decoded.data.shape[0] <= expected + slack, decoded.data.shape
    # Its header says the same, read from the container alone.
    header = ad.header_info(path)
    assert (header.sample_rate, header.channels) == (rate, channels)
    assert header.duration == pytest.approx(seconds, abs=0.02)
    # And the samples are the tone, not silence or noise (away from the onset, where a lossy codec rings).
    tone, middle = _signal(seconds, rate, channels).T, slice(rate // 2, rate)
    assert np.abs(decoded.data[middle]).max() == pytest.approx(0.3, abs=0.03)
    if kind == "m4a":
        assert header.decoder == ad.FFMPEG and header.codec == "aac" and "mp4" in header.container
        # the edit list aligns the decode with the input, sample for sample
        assert np.abs(decoded.data[middle] - tone[middle]).max() < 0.05
    else:
        assert header.codec == "opus"
        assert header.decoder == (ad.LIBSNDFILE if kind == "ogg-opus" else ad.FFMPEG)


def test_the_header_duration_comes_without_a_decode(tmp_path):
    """header_info reads the container's metadata: about 100 kB of a 60 s clip (the probe and its buffers,
    whatever the length), from a path or a file-like; a decode would read all of it."""
    for path in (m4a(tmp_path / "long.m4a", 60.0, channels=1),
                 m4a(tmp_path / "fast.m4a", 60.0, channels=1, faststart=True),
                 opus(tmp_path / "long.webm", 60.0, container="webm")):
        data = path.read_bytes()
        reader = CountingReader(data)
        header = ad.header_info(reader)
        assert header.duration == pytest.approx(60.0, abs=0.02), path.name
        assert len(data) > 400_000 and reader.bytes_read < 120_000, (path.name, reader.bytes_read, len(data))
        # the dataset adapters' duration hint: the same, from a path and from bytes (hf rows)
        assert audio_duration(path) == pytest.approx(60.0, abs=0.02)
        assert audio_duration(io.BytesIO(data)) == pytest.approx(60.0, abs=0.02)
    assert audio_duration(io.BytesIO(b"not audio" * 50)) is None


def test_m4a_and_opus_rows_load_through_load_media(tmp_path):
    media = _raw(_row(m4a(tmp_path / "a.m4a", 1.5, rate=22050, channels=1)))
    assert media.data.shape[0] == 1 and media.info["source_sample_rate"] == 22050
    assert media.info["duration"] == pytest.approx(1.5, abs=AAC_SLACK / 22050)
    media = _raw(_row(opus(tmp_path / "b.webm", 1.0, container="webm", channels=2)))
    assert media.data.shape == (2, 48000) and media.info["source_channels"] == 2


# ---- unreadable files -----------------------------------------------------------------------------------------
def _packet_offsets(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [p.pos for p in c.demux(c.streams.audio[0]) if p.pos is not None and p.pos > 0]


def test_a_corrupt_m4a_is_a_per_sample_error_naming_container_and_codec(tmp_path):
    good = m4a(tmp_path / "good.m4a", 2.0, channels=1, faststart=True).read_bytes()
    garbage = tmp_path / "garbage.m4a"  # a valid ftyp box, then noise
    garbage.write_bytes(good[:28] + np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    cut_moov = tmp_path / "cut-moov.m4a"  # moov at the end: cut off with the second half
    cut_moov.write_bytes(m4a(tmp_path / "end.m4a", 2.0, channels=1).read_bytes()[:8000])
    cut_mid = tmp_path / "cut-mid.m4a"  # moov in front: the samples end inside a packet
    cut_mid.write_bytes(good[: len(good) // 2 + 7])
    offsets = _packet_offsets(tmp_path / "good.m4a")
    cut_packet = tmp_path / "cut-packet.m4a"  # ends exactly between two packets: FFmpeg stops without an error
    cut_packet.write_bytes(good[: offsets[len(offsets) // 3]])
    for path, found in ((garbage, "container mov,mp4,m4a (brand M4A)"), (cut_moov, "container mov,mp4,m4a"),
                        (cut_mid, "container mov,mp4,m4a,3gp,3g2,mj2 (codec aac)"),
                        (cut_packet, "container mov,mp4,m4a,3gp,3g2,mj2 (codec aac): truncated")):
        err = _error(_row(path, rid=f"t:{path.stem}"))
        assert (err.stage, err.reason) == ("read", "unreadable"), (path.name, str(err))
        assert found in str(err) and str(path) in str(err), str(err)
        assert "object at" not in str(err)
    assert "libsndfile: Format not recognised" in str(_error(_row(garbage)))


def test_no_container_recognised_and_no_audio_stream(tmp_path):
    text = tmp_path / "notes.m4a"
    text.write_bytes(b"this is a text file, not audio\n" * 20)
    assert "no container was recognised" in str(_error(_row(text)))
    image = tmp_path / "still.mkv"  # a matroska file whose only stream is video
    with av.open(str(image), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    err = _error(_row(image))
    assert err.reason == "unreadable" and "container matroska,webm has no audio stream (streams: video)" in str(err)


def test_without_pyav_an_m4a_error_names_the_install(tmp_path, monkeypatch):
    path = m4a(tmp_path / "a.m4a", 0.5, channels=1)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as where it is not installed
    err = _error(_row(path))
    assert err.reason == "unreadable" and "pip install -c constraints.txt av" in str(err)
    assert "mov,mp4,m4a" in str(err), str(err)
    assert not ad.decoders()[1].available
    # wav is unaffected
    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    assert _raw(_row(tmp_path / "a.wav")).data.shape == (1, 800)


def test_doctor_lists_what_decodes(monkeypatch):
    from uti import doctor

    line = doctor.check_container_decoder()
    assert line.status == doctor.OK and f"PyAV {av.__version__}" in line.detail
    assert all(f in line.detail for f in ("m4a", "aac", "opus", "webm", "mp3", "flac")), line.detail
    assert doctor.check_libsndfile().detail.startswith("libsndfile ")
    monkeypatch.setitem(sys.modules, "av", None)
    line = doctor.check_container_decoder()
    assert line.status == doctor.WARN and "av" in line.fix and not line.required


# ---- libsndfile formats stay libsndfile's -------------------------------------------------------------------
@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24")])
def test_wav_and_flac_decode_exactly_as_soundfile(tmp_path, fmt, subtype):
    rng = np.random.default_rng(1)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, rng.uniform(-0.5, 0.5, (4000, 2)).astype(np.float32), 16000, format=fmt, subtype=subtype)
    raw = path.read_bytes()
    want, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    decoded = ad.decode(raw)
    assert decoded.header.decoder == ad.LIBSNDFILE and decoded.sample_rate == rate
    assert decoded.data.dtype == want.dtype and np.array_equal(decoded.data, want)
    media = _raw(_row(path))
    assert np.array_equal(media.data, want.T) and "window_applied" not in media.info


# ---- clip windows ---------------------------------------------------------------------------------------------
RATE = 8000


def _ramp_wav(path: Path, seconds: float) -> np.ndarray:
    """A 16-bit ramp, exactly representable: sample i is (i % 20000 - 10000) / 32768."""
    n = int(seconds * RATE)
    x = ((np.arange(n) % 20000) - 10000).astype(np.int16)
    sf.write(path, x, RATE, subtype="PCM_16")
    return x.astype(np.float32) / 32768


def test_a_window_of_a_whole_file_keeps_exactly_its_samples(tmp_path):
    ramp = _ramp_wav(tmp_path / "video.wav", 12.0)
    media = _raw(_row(tmp_path / "video.wav", window=[5, 7]))
    assert media.data.shape == (1, 2 * RATE)
    assert np.array_equal(media.data[0], ramp[5 * RATE:7 * RATE])
    assert media.info["window_applied"] == [5.0, 7.0] and media.info["duration"] == 2.0
    # the same cut through FFmpeg: lossless PCM in a Matroska file
    signal = ramp[None].copy()
    write_clip(tmp_path / "video.mka", fmt="matroska", codec="pcm_s16le", rate=RATE, seconds=12.0, channels=1,
               signal=signal)
    media = _raw(_row(tmp_path / "video.mka", window=[5.25, 7]))
    assert media.data.shape == (1, 14000) and np.abs(media.data[0] - ramp[42000:56000]).max() < 1 / 32768


def test_a_window_stops_the_decode_at_its_end(tmp_path):
    _ramp_wav(tmp_path / "video.wav", 12.0)
    spans = ad.decode_spans((tmp_path / "video.wav").read_bytes(), [(0.0, 3.0), (5.0, 7.0)])
    assert spans.frames_read == 7 * RATE and [p.shape[0] for p in spans.parts] == [3 * RATE, 2 * RATE]


def test_a_file_that_is_the_clip_is_taken_whole(tmp_path):
    ramp = _ramp_wav(tmp_path / "clip.wav", 2.0)
    media = _raw(_row(tmp_path / "clip.wav", window=[30, 32]))
    assert np.array_equal(media.data[0], ramp) and "window_applied" not in media.info
    # a downloader's rounding: 2.9 s for a 2 s window is still the clip
    _ramp_wav(tmp_path / "clip3.wav", 2.9)
    assert _raw(_row(tmp_path / "clip3.wav", window=[30, 32])).data.shape == (1, int(2.9 * RATE))


def test_a_file_that_is_neither_is_window_outside(tmp_path):
    _ramp_wav(tmp_path / "clip.wav", 2.0)
    err = _error(_row(tmp_path / "clip.wav", window=[30, 40]))
    assert (err.stage, err.reason) == ("validate", "window_outside")
    assert "the file is 2.00 s long and the clip window is 30..40 s" in str(err)
    assert "check the file, or drop the row" in str(err)


@pytest.mark.parametrize("window", [[7, 5], [1], "5-7", [0, float("nan")], [-1, 2], [True, 3]])
def test_a_malformed_window_is_bad_window(tmp_path, window):
    _ramp_wav(tmp_path / "a.wav", 1.0)
    err = _error(_row(tmp_path / "a.wav", window=window))
    assert (err.stage, err.reason) == ("read", "bad_window") and "extra.window" in str(err)


def test_the_duration_limit_applies_to_the_window(tmp_path):
    _ramp_wav(tmp_path / "video.wav", 12.0)
    limits = LimitsConfig(max_audio_seconds=3)
    assert _raw(_row(tmp_path / "video.wav", window=[5, 7]), limits).data.shape == (1, 2 * RATE)
    err = _error(_row(tmp_path / "video.wav", window=[0, 10]), limits)
    assert err.reason == "too_long" and "the clip window 0..10" in str(err)
    assert _error(_row(tmp_path / "video.wav"), limits).reason == "too_long"


def test_the_window_reaches_the_sample_meta_and_comes_back(tmp_path):
    _ramp_wav(tmp_path / "video.wav", 12.0)
    row = _row(tmp_path / "video.wav", window=[5, 7])
    assert clip_window(row).to_list() == [5.0, 7.0]
    media = _raw(row)
    sample = build_sample(row, split="train", token_space_id="x", tokens=np.zeros(0, np.uint32),
                          text=np.zeros(0, np.uint32), caption_token_lengths=(), info=media.info)
    meta = json.loads(json.dumps(sample.meta.to_dict()))
    assert meta["window"] == [5.0, 7.0] and meta["window_applied"] == [5.0, 7.0]
    back = source_row(meta)
    assert back.extra == {WINDOW: [5.0, 7.0]} and back.path == row.path
    assert np.array_equal(_raw(back).data, media.data)
    # a row without one has no window field at all
    plain = _row(tmp_path / "video.wav")
    assert WINDOW not in source_meta(plain) and source_row({**source_meta(plain), "id": "t:clip",
                                                            "modality": "audio", "split": "train"}).extra == {}


def test_window_duration_applies_the_rule_at_manifest_time():
    assert window_duration(5, 7, 12.0) == (2.0, [5.0, 7.0])  # the whole video: window recorded
    assert window_duration(30, 40, None) == (10.0, [30.0, 40.0])  # unknown length: recorded
    assert window_duration(30, 40, 10.3) == (10.3, None)  # the clip already: nothing to cut
    assert window_duration(30, 40, 3.0) == (10.0, [30.0, 40.0])  # neither: tokenize reports window_outside
    with pytest.raises(ValueError, match="start_s < end_s"):
        window_duration(7, 5, 12.0)
