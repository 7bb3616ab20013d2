"""The unified tokenizer: codecs + token space -> global uint32 IDs with JSON meta, and strict decode.

Where each code goes is the token space's layout of the modality (`TokenSpace.layout`): frame-major
audio (frame 0 levels 0..n_q-1, then frame 1 ...), one FSQ level, SNAC's levels grouped per frame of
the coarsest one, or an image grid row by row. Decode never guesses: token counts must match meta
(`n_frames * tokens_per_frame` audio -- `n_frames * n_q` when frame-major --, `grid_h * grid_w`
image), every ID must sit in the range its position's level has, and boundary tokens, when present,
must be balanced. Anything else is refused, naming the sample and rule.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from uti.captions import split_captions
from uti.codecs.base import AudioCodec, EncodedAudio, ImageCodec, TextCodec
from uti.config import UTIConfig, load_config
from uti.errors import ConfigError, DecodeRefused, RuntimeSizeMismatch
from uti.modalities import MODALITIES
from uti.token_space import BOUNDARY_PAIRS, VERSION, TokenSpace, missing_modality_message, require_same

log = logging.getLogger(__name__)

ID_DTYPE = np.uint32


def config_size_mismatches(config: UTIConfig, tok: "UnifiedTokenizer") -> list[str]:
    """Sizes the config fixes (`promised_sizes`: e.g. audio n_q, image proc_size) that the loaded model
    does not have, one line each."""
    problems = []
    for modality in ("image", "audio"):
        settings, codec = getattr(config, modality), getattr(tok, modality)
        if settings is None or codec is None:
            continue
        loaded = codec.runtime_sizes()
        for key, want in settings.promised_sizes().items():
            if key not in loaded:
                problems.append(f"{modality}.{key}: the config sets it but the {settings.kind} codec does not report it")
            elif _plain_number(loaded[key]) != _plain_number(want):
                problems.append(f"{modality}.{key}: config {want!r}, loaded model {loaded[key]!r}")
    return problems


def _plain_number(value: Any) -> Any:
    """Tuples as lists and whole floats as ints, so 6 == 6.0 and (64, 64) == [64, 64]."""
    if isinstance(value, (list, tuple)):
        return [_plain_number(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
                 modalities: Sequence[str] = MODALITIES, token_space: TokenSpace | None = None,
                 describe: Sequence[str] = (), allow_mismatch: bool = False, mismatch_fix: str | None = None):
        """Load the configured codecs of `modalities` (text: whenever configured) once. A modality the
        config has no codec for is not loaded and has no range. When `token_space` is given (e.g. from a
        dataset), the loaded codecs must match it exactly, by the recipe of its version.

        `describe`: media modalities whose codec is not loaded but which the built token space still
        covers, from the descriptor an earlier load remembered (uti.codecs.descriptors) or a load that is
        dropped at once: a tokenize job's space names every configured codec, an audio job runs only one.

        A loaded codec that differs from `token_space` raises TokenSpaceMismatch ending in `mismatch_fix`
        (the caller's advice, e.g. its command's override flag). With `allow_mismatch` the codecs are used
        anyway under the given token space, and each difference is kept in `self.mismatches` for the caller
        to record."""
        from uti.codecs import descriptors
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
        described: dict[str, Any] = {}
        for modality, codec in self._codecs(all_=True).items():
            settings = getattr(cfg, modality)
            if codec is not None:
                described[modality] = codec.descriptor(version)
                if modality != "text":
                    descriptors.remember(modality, settings, version, described[modality])
            elif modality in describe and modality != "text" and settings is not None:
                described[modality] = descriptors.describe_without_loading(modality, settings, version, device=device)
            else:
                described[modality] = None
        built = TokenSpace.build(**described, num_reserved=cfg.num_reserved_specials, version=version)
        self.mismatches: list[dict[str, Any]] = []
        if token_space is None:
            token_space = built
        else:
            for modality, codec in self._codecs().items():
                theirs = token_space.codecs.get(modality)
                if theirs is None or theirs.to_dict() != codec.descriptor(version).to_dict():
                    record = require_same(token_space, built, what=f"loaded {modality} codec",
                                          override=allow_mismatch, fix=mismatch_fix)
                    if record:
                        self.mismatches.append(record)
            if version < VERSION and self.text is not None and token_space.codecs["text"].kind == "hf":
                log.warning("token space %s is version %d: its ID covers the Hugging Face tokenizer's folder name "
                            "and vocabulary only (which match), not its normalizer, pre-tokenizer or options. "
                            "Re-tokenize with this uti for an ID that covers them",
                            token_space.short_id, version)
        self.space = token_space
        self.space.check_runtime(self.runtime_sizes())
        problems = config_size_mismatches(cfg, self)
        if problems:
            raise RuntimeSizeMismatch("the loaded codecs do not have the sizes the codec config asks for: "
                                      + "; ".join(problems) + ". Fix the config or load the weights it describes")

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

    def encode_captions(self, captions: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """All captions of a sample as one uint32 ID array (text.npy) and each caption's length
        (meta caption_token_lengths); `split_captions` is the inverse."""
        ids = [self.encode_text(c) for c in captions]
        text = np.concatenate(ids).astype(ID_DTYPE) if ids else np.zeros(0, ID_DTYPE)
        return text, [int(c.size) for c in ids]

    # The inverse of encode_captions; it lives in uti.captions (numpy only) for readers that load no codec.
    split_captions = staticmethod(split_captions)

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
        layout = self.space.layout("image")
        out = []
        for codes in codec.encode(images):
            ids = layout.to_ids(np.asarray(codes).reshape(-1, layout.tokens_per_frame))  # row-major grid / causal order
            out.append((ids, {
                "modality": "image", "proc_size": list(codec.proc_size), **layout.shape_meta(),  # grid or n_tokens
                "token_space_id": self.space.id,
            }))
        return out

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        return self.encode_images([image])[0]

    def check_image_tokens(self, ids: Any, meta: Mapping[str, Any], *, what: str = "image") -> np.ndarray:
        """Validate and return the local codes, (grid_h, grid_w) for a grid layout or (n_tokens,) for a causal1d
        one (SEED); raise DecodeRefused naming the rule."""
        codec: ImageCodec = self._need("image")
        ids = self._strip_boundaries(as_ids(ids, what=what), "image", what)
        self._check_meta_space(meta, what)
        layout = self.space.layout("image")
        shape = layout.shape_meta()  # {"grid": [h, w]} or {"n_tokens": n}: what the meta must say
        got = {k: list(meta[k]) if isinstance(meta.get(k), (list, tuple)) else meta.get(k) for k in shape}
        if got != shape or list(meta.get("proc_size") or ()) != list(codec.proc_size):
            raise DecodeRefused(f"{what}: meta {got} / proc_size {meta.get('proc_size')} differ from the token space's "
                                f"image codec {shape} / {list(codec.proc_size)}")
        n = layout.expected_len(shape)
        if ids.size != n:
            need = f"grid {shape['grid'][0]}x{shape['grid'][1]}" if "grid" in shape else f"n_tokens {n} ({layout.kind})"
            raise DecodeRefused(f"{what}: {ids.size} tokens, but {need} needs {n}")
        i = layout.first_violation(ids)
        if i is not None:
            r = layout.range_of_position(i)
            raise DecodeRefused(f"{what}: ID {int(ids[i])} at position {i} is outside the image range [{r.start}, {r.end})")
        codes = layout.to_codes(ids)
        return codes.reshape(shape["grid"]) if "grid" in shape else codes.reshape(-1)

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
        layout = self.space.layout("audio")
        out = []
        for enc in codec.encode(clips):
            ids = layout.to_ids(enc.codes)  # (n_frames, tokens_per_frame) in layout order
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
        layout = self.space.layout("audio")
        n_frames, n_samples = meta.get("n_frames"), meta.get("n_samples")
        if not isinstance(n_frames, int) or not isinstance(n_samples, int) or n_frames < 1 or n_samples < 1:
            raise DecodeRefused(f"{what}: meta needs positive integers n_frames and n_samples")
        per = layout.tokens_per_frame
        if ids.size != n_frames * per:
            label = "n_q" if per == codec.n_q else "tokens_per_frame"
            raise DecodeRefused(f"{what}: {ids.size} tokens, but n_frames*{label} = {n_frames}*{per} = {n_frames * per}")
        expected = codec.expected_frames(n_samples, dict(meta))
        if n_frames != expected:
            raise DecodeRefused(f"{what}: meta n_frames={n_frames} but {n_samples} samples give {expected} frames")
        i = layout.first_violation(ids)
        if i is not None:
            tid, lvl, k = int(ids[i]), layout.range_of_position(i), layout.level_of_position(i)
            where = self.space.modality_of(tid) if 0 <= tid < self.space.vocab_size else "outside the vocab"
            level = next((r.name for r in self.space.audio_levels if tid in r), where)
            slot = "" if per == codec.n_q else f" (position {i % per} of {per})"
            raise DecodeRefused(f"{what}: frame {i // per} level {k}{slot}: ID {tid} is not in {lvl.name} "
                                f"[{lvl.start}, {lvl.end}) (it is in {level})")
        extra = {k: meta[k] for k in ("segment_frames", "scales") if k in meta}
        return EncodedAudio(codes=layout.to_codes(ids), n_samples=n_samples, extra=extra)

    def decode_audio(self, ids: Any, meta: Mapping[str, Any], *, what: str = "audio") -> torch.Tensor:
        enc = self.check_audio_tokens(ids, meta, what=what)
        codec: AudioCodec = self._need("audio")
        wav = codec.decode(enc)
        want = codec.decoded_samples(enc.n_samples)
        if abs(wav.shape[-1] - want) > codec.output_hop_length:
            at = f" ({want} at {codec.output_sample_rate} Hz)" if want != enc.n_samples else ""
            raise DecodeRefused(f"{what}: decoded {wav.shape[-1]} samples, meta says {enc.n_samples}{at}")
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
