"""The codec registry: adapters register under the `uti.codecs` entry points, ours and
a plugin's alike; `uti tokenspace codecs` lists what is installed with each model's sizes.

The plugin test builds a throwaway wheel (one adapter, one `uti.codecs` entry point), pip-installs it
into this environment, sees it listed and tokenizing, and uninstalls it afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from uti.codecs import registry
from uti.config import config_from_yaml
from uti.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIST = "uti-toy-codec-h14"  # a name no real package has
PLUGIN_KIND = "toy_mulaw_h14"

PLUGIN_MODULE = textwrap.dedent('''
    """A codec from outside uti: 8 kHz mono, frames of 80 samples, each of its `levels` sub-frames' mean
    as one of 16 mu-law buckets. Small, deterministic, no model."""
    import hashlib
    from dataclasses import dataclass

    import numpy as np
    import torch

    from uti.codecs.base import AudioCodec, CodecVariant, EncodedAudio, check_clip, check_codes
    from uti.config import AudioSettings
    from uti.token_space import CodecDescriptor

    MU, BOOK, HOP = 255.0, 16, 80


    @dataclass(kw_only=True, frozen=True)
    class ToySettings(AudioSettings):
        kind: str = "toy_mulaw_h14"
        levels: int = 2


    class ToyCodec(AudioCodec):
        kind = "toy_mulaw_h14"
        settings = ToySettings

        def __init__(self, settings):
            self._levels = settings.levels

        @classmethod
        def from_settings(cls, settings, *, device="cpu"):
            return cls(settings)

        @classmethod
        def variants(cls):
            return [CodecVariant(model="-", sizes={"sample_rate": 8000, "channels": 1, "frame_rate": 100.0,
                                                   "codebook_size": BOOK, "n_q": 2, "layout": "frame_major"})]

        sample_rate = property(lambda self: 8000)
        channels = property(lambda self: 1)
        n_q = property(lambda self: self._levels)
        codebook_size = property(lambda self: BOOK)
        frame_rate = property(lambda self: 100.0)
        hop_length = property(lambda self: HOP)

        def describe(self, version=3):
            return CodecDescriptor(modality="audio", kind=self.kind, name="toy", weights="none",
                                   fingerprint=hashlib.sha256(b"toy-v1").hexdigest(), params=self.runtime_sizes())

        def encode(self, clips):
            out = []
            for i, clip in enumerate(clips):
                x = check_clip(clip, i, channels=1, name="toy", device=torch.device("cpu"))[0].double()
                frames = self.expected_frames(x.shape[0])
                x = torch.nn.functional.pad(x, (0, frames * HOP - x.shape[0])).reshape(frames, self._levels, -1).mean(-1)
                y = torch.sign(x) * torch.log1p(MU * x.abs().clamp(max=1)) / np.log1p(MU)
                codes = ((y + 1) / 2 * (BOOK - 1)).round().long().numpy()
                out.append(EncodedAudio(codes=codes, n_samples=int(clip.shape[1])))
            return out

        def decode(self, encoded):
            codes = check_codes(encoded.codes, tokens_per_frame=self._levels, codebook_size=BOOK, name="toy")
            y = torch.from_numpy(codes).double() / (BOOK - 1) * 2 - 1
            x = torch.sign(y) * ((1 + MU) ** y.abs() - 1) / MU
            wav = x.repeat_interleave(HOP // self._levels, dim=1).reshape(1, -1).float()
            return wav[:, : encoded.n_samples]
''')


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_plugin_wheel(folder: Path) -> Path:
    """A wheel written by hand (a zip with .dist-info): no build backend and no network needed."""
    dist_info = "uti_toy_codec_h14-0.1.0.dist-info"
    files = {
        "uti_toy_codec_h14/__init__.py": b"",
        "uti_toy_codec_h14/codec.py": PLUGIN_MODULE.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PLUGIN_DIST}\nVersion: 0.1.0\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: uti-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": f"[uti.codecs]\n{PLUGIN_KIND} = uti_toy_codec_h14.codec:ToyCodec\n".encode(),
    }
    record = "\n".join([_record_line(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / "uti_toy_codec_h14-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
                          capture_output=True, text=True)


def uti(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["uti", *args], capture_output=True, text=True, cwd=cwd)


def test_a_plugin_package_adds_a_codec_that_is_listed_and_tokenizes(tmp_path):
    wheel = build_plugin_wheel(tmp_path)
    installed = pip("install", "--no-deps", "--no-index", str(wheel))
    assert installed.returncode == 0, installed.stderr
    try:
        listed = uti("tokenspace", "codecs", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith(PLUGIN_KIND))
        assert "8000 Hz, 1 ch" in row and "2 x 16" in row and "100 Hz" in row and PLUGIN_DIST in row

        config = tmp_path / "uti.yaml"
        config.write_text(f"text: {{kind: byte}}\naudio: {{kind: {PLUGIN_KIND}, levels: 4}}\n")
        built = uti("tokenspace", "build", "--config", str(config), "--out", str(tmp_path / "ts"), cwd=tmp_path)
        assert built.returncode == 0, built.stderr

        registry.reload_entries()  # this process discovered the entry points before the install
        from uti.tokenizer import UnifiedTokenizer

        tok = UnifiedTokenizer(config_from_yaml(config.read_text()))
        from uti.token_space import TokenSpace

        assert tok.space.id == TokenSpace.load(tmp_path / "ts").id and len(tok.space.audio_levels) == 4
        clip = tok.prepare_audio(0.3 * np.sin(np.linspace(0, 200, 4000)).astype(np.float32), 8000)
        ids, meta = tok.encode_audio(clip)
        assert ids.size == meta["n_frames"] * 4 == 50 * 4
        assert tok.decode_audio(ids, meta).shape == (1, 4000)
    finally:
        removed = pip("uninstall", "-y", PLUGIN_DIST)
        registry.reload_entries()
    assert removed.returncode == 0, removed.stderr
    assert PLUGIN_KIND not in registry.codec_entries()
    with pytest.raises(ConfigError, match=f"{PLUGIN_KIND}' is not an installed audio codec"):
        config_from_yaml(f"audio: {{kind: {PLUGIN_KIND}}}")


def test_every_built_in_codec_is_registered_in_pyproject():
    """Our adapters register through the same entry points a plugin uses (BUILTIN only covers an
    install whose metadata predates them)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["uti.codecs"]
    assert declared == registry.BUILTIN
    for kind in declared:
        cls = registry.codec_class(kind)
        assert cls.kind == kind and cls.variants(), kind


def test_codecs_listing_shows_every_kind_with_sizes():
    listed = uti("tokenspace", "codecs")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0] + " " + line.split()[2]: line for line in listed.stdout.splitlines()[1:] if line.strip()
            and not line.startswith("select")}
    assert "24000 Hz, 1 ch" in rows["mimi mimi"] and "8 of 32 x 2048" in rows["mimi mimi"] and "12.5 Hz" in rows["mimi mimi"]
    assert "44100 Hz" in rows["dac 44khz"] and "9 x 1024" in rows["dac 44khz"]
    assert "1 x 65536" in rows["xcodec2 xcodec2"] and "fsq" in rows["xcodec2 xcodec2"]
    assert "3 (1+2+4 per frame) x 4096" in rows["snac 24khz"] and "multirate" in rows["snac 24khz"]
    assert "512x512 px -> 64x64" in rows["emu3 emu3"] and "1 x 32768" in rows["emu3 emu3"]
    assert "384x384 px -> 24x24" in rows["janus janus"] and "1 x 16384" in rows["janus janus"]
    assert "2-32 x 1024" in rows["encodec encodec_24khz"]
    # the transformers codecs: sizes of the real architectures, read from their configs
    assert "40 Hz" in rows["wavtokenizer 40token"] and "75 Hz" in rows["wavtokenizer 75token"]
    assert "1 x 4096" in rows["wavtokenizer 40token"] and "frame_major" in rows["wavtokenizer 75token"]
    assert "16000 -> 24000 Hz, 1 ch" in rows["neucodec neucodec"] and "1 x 65536" in rows["neucodec neucodec"]
    assert "50 Hz" in rows["neucodec neucodec"] and "fsq" in rows["neucodec neucodec"]
    assert "25 Hz" in rows["higgs_audio_v2 higgs_audio_v2"] and "2-8 x 1024" in rows["higgs_audio_v2 higgs_audio_v2"]
    assert "16000 Hz" in rows["xcodec hubert-librispeech"] and "1-8 x 1024" in rows["xcodec hubert-librispeech"]
    assert "512x512 px -> 32x32" in rows["chameleon chameleon"] and "1 x 8192" in rows["chameleon chameleon"]


def _with_entry_points(monkeypatch, *points: EntryPoint) -> None:
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    registry.reload_entries()


def test_conflicting_or_broken_registrations_are_clear_errors(monkeypatch):
    try:
        _with_entry_points(monkeypatch, EntryPoint("mimi", "some_pkg.codec:Other", "uti.codecs"))
        with pytest.raises(ConfigError, match="'mimi' is built into uti .* a plugin must use a kind of its own"):
            registry.codec_entries()
        _with_entry_points(monkeypatch, EntryPoint("odd", "uti.codecs.mimi:MimiAudioCodec", "uti.codecs"))
        with pytest.raises(ConfigError, match="its class says kind 'mimi'; the entry-point name and the class's"):
            registry.codec_class("odd")
        _with_entry_points(monkeypatch, EntryPoint("gone", "no_such_module_h14:Codec", "uti.codecs"))
        with pytest.raises(ConfigError, match="cannot load no_such_module_h14:Codec"):
            registry.codec_class("gone")
        broken = {c.kind: c for c in registry.installed_codecs()}["gone"]
        assert "ModuleNotFoundError" in broken.error or "cannot load" in broken.error
    finally:
        monkeypatch.undo()
        registry.reload_entries()


def test_settings_are_parsed_by_kind_everywhere_a_config_is_read():
    """job.json configs are read with strict.from_dict(UTIConfig, ...) by tokenize, verify and generate:
    a media section given as a mapping becomes its kind's settings there too."""
    from uti.codecs.mimi import MimiSettings
    from uti.config import UTIConfig
    from uti.strict import from_dict

    cfg = config_from_yaml("text: {kind: byte}\naudio: {kind: mimi, n_q: 2, arch: small}\nimage: {kind: janus}\n")
    assert isinstance(cfg.audio, MimiSettings) and cfg.audio.n_q == 2
    assert from_dict(UTIConfig, cfg.to_dict()) == cfg
    assert type(from_dict(UTIConfig, cfg.to_dict()).image).__name__ == "JanusSettings"
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(UTIConfig, {"audio": {"kind": "mimi", "bandwidth": 6.0}})


def test_registry_stays_in_the_bottom_package():
    """`uti` imports nothing of sharding, ray_jobs, verify or train (the registry included)."""
    code = ("import sys; import uti.codecs.registry as r; r.installed_codecs(); "
            "import uti.tokenizer, uti.audit, uti.cli_commands; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sharding', 'ray_jobs', 'verify', 'train'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
