"""The unified tokenizer: codecs + token space -> global uint32 IDs with JSON meta, and strict decode.

Decode never guesses: token counts must match meta (`n_frames * n_q` audio, `grid_h * grid_w` image),
every ID must sit in its modality's range (and audio IDs on their own level, frame-major), and
boundary tokens, when present, must be balanced. Anything else is refused, naming the sample and rule.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from uti.codecs.base import AudioCodec, EncodedAudio, ImageCodec, TextCodec
from uti.config import UTIConfig, load_config
from uti.errors import ConfigError, DecodeRefused
from uti.token_space import BOUNDARY_PAIRS, VERSION, TokenSpace, missing_modality_message, require_same

log = logging.getLogger(__name__)

ID_DTYPE = np.uint32
MODALITIES = ("text", "image", "audio")


def as_ids(values: Any, *, what: str) -> np.ndarray:
    """IDs are uint32 everywhere; refuse (never cast) other dtypes so a layout bug cannot slip through."""
    arr = np.asarray(values)
    if arr.dtype != ID_DTYPE:
        raise DecodeRefused(f"{what}: token IDs must be uint32, got {arr.dtype}")
    if arr.ndim != 1:
        raise DecodeRefused(f"{what}: token IDs must be 1-D, got shape {arr.shape}")
    return arr


class UnifiedTokenizer:
    def __init__(self, config: UTIConfig | None = None, *, device: str | None = None,
                 modalities: Sequence[str] = MODALITIES, token_space: TokenSpace | None = None):
        """Load the configured codecs of `modalities` (text: whenever configured) once. A modality the
        config has no codec for is not loaded and has no range. When `token_space` is given (e.g. from a
        dataset), the loaded codecs must match it exactly, by the recipe of its version."""
        from uti.codecs.registry import build_audio_codec, build_image_codec, build_text_codec

        self.config = config or load_config("default")
        device = device or self.config.device
        cfg = self.config
        self.text: TextCodec | None = build_text_codec(cfg.text) if cfg.text is not None else None
        self.image: ImageCodec | None = (build_image_codec(cfg.image, device=device)
                                         if "image" in modalities and cfg.image is not None else None)
        self.audio: AudioCodec | None = (build_audio_codec(cfg.audio, device=device)
                                         if "audio" in modalities and cfg.audio is not None else None)
        # A given token space of an older version is compared with what that version recorded.
        version = token_space.version if token_space is not None else VERSION
        built = TokenSpace.build(
            **{m: (c.descriptor(version) if c is not None else None) for m, c in self._codecs(all_=True).items()},
            num_reserved=cfg.num_reserved_specials, version=version,
        )
        if token_space is None:
            token_space = built
        else:
            for modality, codec in self._codecs().items():
                theirs = token_space.codecs.get(modality)
                if theirs is None or theirs.to_dict() != codec.descriptor(version).to_dict():
                    require_same(token_space, built, what=f"loaded {modality} codec")
            if version < VERSION and self.text is not None and token_space.codecs["text"].kind == "hf":
                log.warning("token space %s is version %d: its ID covers the Hugging Face tokenizer's folder name "
                            "and vocabulary only (which match), not its normalizer, pre-tokenizer or options. "
                            "Re-tokenize with this uti for an ID that covers them",
                            token_space.short_id, version)
        self.space = token_space
        self.space.check_runtime(self.runtime_sizes())

    def _codecs(self, *, all_: bool = False) -> dict[str, Any]:
        """The loaded codecs by modality (with all_: every modality, None where not loaded)."""
        codecs = {"text": self.text, "image": self.image, "audio": self.audio}
        return codecs if all_ else {m: c for m, c in codecs.items() if c is not None}

    def runtime_sizes(self) -> dict[str, dict[str, Any]]:
        return {m: c.runtime_sizes() for m, c in self._codecs().items()}

    # ---- text -----------------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        local = np.asarray(self._need("text").encode(text), dtype=np.int64)
        return (local + self.space.range("text").start).astype(ID_DTYPE)

    def decode_text(self, ids: Any, *, what: str = "text") -> str:
        ids = as_ids(ids, what=what)
        codec = self._need("text")
        r = self.space.range("text")
        bad = (ids < r.start) | (ids >= r.end)
        if bad.any():
            i = int(np.argmax(bad))
            raise DecodeRefused(f"{what}: ID {int(ids[i])} at position {i} is outside the text range [{r.start}, {r.end})")
        return codec.decode((ids.astype(np.int64) - r.start).tolist())

    # ---- image ----------------------------------------------------------------------------------
    def _need(self, modality: str):
        codec = getattr(self, modality)
        if codec is not None:
            return codec
        if getattr(self.config, modality) is None:
            if not self.space.has_modality(modality):
                raise ConfigError(missing_modality_message(self.space, modality))
            raise ConfigError(f"token space {self.space.short_id} has a {modality} range but the codec config has no "
                              f"{modality}: codec; use the config the data was tokenized with (its job.json)")
        raise DecodeRefused(f"this tokenizer was loaded without the {modality} codec")

    def encode_images(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        codec: ImageCodec = self._need("image")
        start = self.space.range("image").start
        out = []
        for codes in codec.encode(images):
            ids = (codes.reshape(-1) + start).astype(ID_DTYPE)
            out.append((ids, {
                "modality": "image", "proc_size": list(codec.proc_size), "grid": list(codec.grid),
                "token_space_id": self.space.id,
            }))
        return out

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        return self.encode_images([image])[0]

    def check_image_tokens(self, ids: Any, meta: Mapping[str, Any], *, what: str = "image") -> np.ndarray:
        """Validate and return the local (grid_h, grid_w) codes; raise DecodeRefused naming the rule."""
        codec: ImageCodec = self._need("image")
        ids = self._strip_boundaries(as_ids(ids, what=what), "image", what)
        self._check_meta_space(meta, what)
        grid = tuple(meta.get("grid") or ())
        if grid != tuple(codec.grid) or list(meta.get("proc_size") or ()) != list(codec.proc_size):
            raise DecodeRefused(f"{what}: meta grid {grid} / proc_size {meta.get('proc_size')} differ from the "
                                f"codec's {codec.grid} / {list(codec.proc_size)}")
        if ids.size != grid[0] * grid[1]:
            raise DecodeRefused(f"{what}: {ids.size} tokens, but grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]}")
        r = self.space.range("image")
        bad = (ids < r.start) | (ids >= r.end)
        if bad.any():
            i = int(np.argmax(bad))
            raise DecodeRefused(f"{what}: ID {int(ids[i])} at position {i} is outside the image range [{r.start}, {r.end})")
        return (ids.astype(np.int64) - r.start).reshape(grid)

    def decode_image(self, ids: Any, meta: Mapping[str, Any], *, what: str = "image") -> np.ndarray:
        codes = self.check_image_tokens(ids, meta, what=what)
        out = self._need("image").decode(codes)
        if list(out.shape[:2]) != list(meta["proc_size"]):
            raise DecodeRefused(f"{what}: decoded size {out.shape[:2]} != meta proc_size {meta['proc_size']}")
        return out

    # ---- audio ----------------------------------------------------------------------------------
    def prepare_audio(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(channels, samples) or (samples,) at any rate -> float32 (codec channels, samples) at codec rate."""
        from uti.preprocess import prepare_waveform

        codec: AudioCodec = self._need("audio")
        return prepare_waveform(wav, sample_rate, target_rate=codec.sample_rate, channels=codec.channels)

    def encode_audios(self, clips: Sequence[torch.Tensor]) -> list[tuple[np.ndarray, dict]]:
        """Clips already at the codec's rate and channels (see prepare_audio)."""
        codec: AudioCodec = self._need("audio")
        starts = np.array([lvl.start for lvl in self.space.audio_levels], dtype=np.int64)
        out = []
        for enc in codec.encode(clips):
            ids = (enc.codes + starts[None, :]).reshape(-1).astype(ID_DTYPE)  # frame-major
            meta = {
                "modality": "audio", "sample_rate": codec.sample_rate, "channels": codec.channels,
                "n_samples": enc.n_samples, "n_frames": int(enc.codes.shape[0]), "n_q": codec.n_q,
                "frame_rate": codec.frame_rate, "token_space_id": self.space.id, **enc.extra,
            }
            out.append((ids, meta))
        return out

    def encode_audio(self, clip: torch.Tensor) -> tuple[np.ndarray, dict]:
        return self.encode_audios([clip])[0]

    def check_audio_tokens(self, ids: Any, meta: Mapping[str, Any], *, what: str = "audio") -> EncodedAudio:
        """Validate and return local codes (n_frames, n_q); raise DecodeRefused naming the rule."""
        codec: AudioCodec = self._need("audio")
        ids = self._strip_boundaries(as_ids(ids, what=what), "audio", what)
        self._check_meta_space(meta, what)
        for key, want in (("sample_rate", codec.sample_rate), ("n_q", codec.n_q), ("channels", codec.channels)):
            if meta.get(key) != want:
                raise DecodeRefused(f"{what}: meta {key}={meta.get(key)!r}, the codec has {want}")
        n_frames, n_q, n_samples = meta.get("n_frames"), codec.n_q, meta.get("n_samples")
        if not isinstance(n_frames, int) or not isinstance(n_samples, int) or n_frames < 1 or n_samples < 1:
            raise DecodeRefused(f"{what}: meta needs positive integers n_frames and n_samples")
        if ids.size != n_frames * n_q:
            raise DecodeRefused(f"{what}: {ids.size} tokens, but n_frames*n_q = {n_frames}*{n_q} = {n_frames * n_q}")
        expected = codec.expected_frames(n_samples, dict(meta))
        if n_frames != expected:
            raise DecodeRefused(f"{what}: meta n_frames={n_frames} but {n_samples} samples give {expected} frames")
        grid = ids.astype(np.int64).reshape(n_frames, n_q)
        for k, lvl in enumerate(self.space.audio_levels):
            col = grid[:, k]
            bad = (col < lvl.start) | (col >= lvl.end)
            if bad.any():
                f = int(np.argmax(bad))
                tid = int(col[f])
                where = self.space.modality_of(tid) if 0 <= tid < self.space.vocab_size else "outside the vocab"
                level = next((r.name for r in self.space.audio_levels if tid in r), where)
                raise DecodeRefused(f"{what}: frame {f} level {k}: ID {tid} is not in {lvl.name} "
                                    f"[{lvl.start}, {lvl.end}) (it is in {level})")
            grid[:, k] = col - lvl.start
        extra = {k: meta[k] for k in ("segment_frames", "scales") if k in meta}
        return EncodedAudio(codes=grid, n_samples=n_samples, extra=extra)

    def decode_audio(self, ids: Any, meta: Mapping[str, Any], *, what: str = "audio") -> torch.Tensor:
        enc = self.check_audio_tokens(ids, meta, what=what)
        wav = self._need("audio").decode(enc)
        if abs(wav.shape[-1] - enc.n_samples) > self._need("audio").hop_length:
            raise DecodeRefused(f"{what}: decoded {wav.shape[-1]} samples, meta says {enc.n_samples}")
        return wav

    # ---- shared rules ---------------------------------------------------------------------------
    def _check_meta_space(self, meta: Mapping[str, Any], what: str) -> None:
        found = meta.get("token_space_id")
        if found is not None and found != self.space.id:
            raise DecodeRefused(f"{what}: meta token_space_id {str(found)[:12]} != this tokenizer's {self.space.short_id}; "
                                "decode with the token space the tokens were made with")

    def _strip_boundaries(self, ids: np.ndarray, modality: str, what: str) -> np.ndarray:
        """Accept media tokens bare or wrapped once in their own boundary pair; refuse anything unbalanced."""
        begin, end = (self.space.special(t) for t in BOUNDARY_PAIRS[modality])
        starts, ends = int((ids == begin).sum()), int((ids == end).sum())
        if starts == 0 and ends == 0:
            return ids
        if starts == 1 and ends == 1 and ids.size >= 2 and ids[0] == begin and ids[-1] == end:
            return ids[1:-1]
        raise DecodeRefused(f"{what}: unbalanced {BOUNDARY_PAIRS[modality][0]}/{BOUNDARY_PAIRS[modality][1]} "
                            f"boundary tokens ({starts} open, {ends} close)")
