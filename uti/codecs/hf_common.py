"""What the adapters on `transformers` models (and SNAC) share.

Weights come from one of:
* a local Hugging Face folder (`weights: /models/mimi`): config.json + *.safetensors, loaded with
  `from_pretrained(path, local_files_only=True, use_safetensors=True)` in float32; never a download,
  never a pickle;
* `random:SEED`: the real architecture (the `model:` variant's config) with fixed-seed weights;
* `random:SEED` + `arch: small` (a named small config every adapter provides, for tests and demos) or
  `arch: {key: value}` (overrides of the HF config).
The token space records the weights fingerprint and the loaded model's whole architecture config
(`params.arch`), so any change to either changes the token-space ID.

Encoding runs in forward passes of `encode_batch` items (uti.codecs.batching). Measured on CPU: at equal
input length, a batch of 3 through Mimi's encoder gives latents 2e-5 away from the same clips alone, a
small DAC 3e-10; a code near a decision boundary then flips. So a pass never takes the shape of its
items: with encode_batch 1 each item goes alone at its own length; with B > 1 every pass of a bucket
has the one shape (B, channels, bucket length), filled up with all-zero dummy items, so an item's codes
are a function of the item alone, whichever items share its pass.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from uti.codecs.base import AudioCodec, EncodedAudio, ImageCodec, check_clip, check_codes, check_image
from uti.codecs.batching import PADDING_BUCKETS, Pass, bucket_frames, padded_batch, plan_passes, timed_passes
from uti.codecs.weights import WeightsSpec, cached_random_state, fingerprint_state_dict, round_to_half
from uti.config import AudioSettings, ImageSettings
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.quiet import no_loading_bars
from uti.token_space import BATCHING_IN_DESCRIPTOR_UNTIL, VERSION, CodecDescriptor, expected_audio_frames

# HF config keys that say where/how a config was saved or what a training/generation API returns; none
# changes what encode or decode compute.
NOT_ARCHITECTURE = frozenset({
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "return_dict",
    "output_attentions", "output_hidden_states", "use_cache", "id2label", "label2id", "problem_type",
    "chunk_size_feed_forward", "is_encoder_decoder", "tie_word_embeddings", "_commit_hash",
    "_attn_implementation_autoset",
})
ATTENTION = "eager"  # one attention code path on every device: SDPA picks kernels by device and shape
SMALL = "small"


@dataclass(kw_only=True, frozen=True)
class HFAudioSettings(AudioSettings):
    """Settings every audio adapter on a HF-style model takes."""

    kind: str
    model: str | None = None  # a named variant (see `uti tokenspace codecs`); None: the default / the folder's
    weights: str = "random:0"  # "random:SEED" or a local Hugging Face folder
    arch: str | dict[str, Any] | None = None  # random weights only: "small" or overrides of the HF config


@dataclass(kw_only=True, frozen=True)
class HFImageSettings(ImageSettings):
    """Settings every image adapter on a HF-style model takes."""

    kind: str
    model: str | None = None
    weights: str = "random:0"
    arch: str | dict[str, Any] | None = None
    proc_size: int | None = None  # square input size; None: the model's default

    def promised_sizes(self) -> dict[str, Any]:
        return {"proc_size": [self.proc_size, self.proc_size]} if self.proc_size is not None else {}


def check_kind(settings: Any, kind: str) -> None:
    if settings.kind != kind:
        raise ConfigError(f"{type(settings).__name__} holds the settings of kind {kind!r}, not {settings.kind!r}")


def pick_variant(variants: Mapping[str, dict], model: str | None, *, default: str, where: str) -> str:
    name = default if model is None else model
    if name not in variants:
        raise ConfigError(f"{where}.model: {model!r} is not one of {', '.join(sorted(variants))}")
    return name


def arch_kwargs(base: Mapping[str, Any], small: Mapping[str, Any], arch: str | Mapping[str, Any] | None,
                *, config_cls: type, where: str) -> dict[str, Any]:
    """The HF config kwargs for random weights: the real architecture, the named small one, or overrides."""
    if arch is None:
        return dict(base)
    if isinstance(arch, str):
        if arch != SMALL:
            raise ConfigError(f"{where}.arch: {arch!r} is not {SMALL!r} or a mapping of {config_cls.__name__} overrides")
        return {**base, **small}
    known = config_keys(config_cls)
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ConfigError(f"{where}.arch: unknown {config_cls.__name__} key(s) {unknown}; known: {sorted(known)}")
    return {**base, **dict(arch)}


def config_keys(config_cls: type) -> set[str]:
    keys = set(config_cls().to_dict())
    if dataclasses.is_dataclass(config_cls):
        keys |= {f.name for f in dataclasses.fields(config_cls)}
    return {k for k in keys if not k.startswith("_") or k == "_frame_rate"} - NOT_ARCHITECTURE


def build_config(config_cls: type, kwargs: Mapping[str, Any], *, where: str):
    try:
        cfg = config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.arch: {config_cls.__name__} refuses these settings: {exc}") from None
    cfg._attn_implementation = ATTENTION
    return cfg


def architecture(config: Any) -> dict[str, Any]:
    """The loaded model's config as the token space records it (everything but NOT_ARCHITECTURE)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _plain({k: v for k, v in sorted(data.items()) if k not in NOT_ARCHITECTURE})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items()) if k not in NOT_ARCHITECTURE}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def require_random_or_folder(spec: WeightsSpec, *, where: str, download_hint: str) -> None:
    if spec.kind == "pretrained":
        raise ConfigError(f"{where}.weights: 'pretrained' would download; uti never downloads codec weights. "
                          f"Download them once ({download_hint}) and give the folder, or use random:SEED")


def check_folder(path: Path, *, where: str, model_type: str | None, allow_bin: bool = False) -> dict[str, Any]:
    """A local model folder: config.json (of the right model type) and safetensors weights."""
    if not path.is_dir():
        raise WeightsError(f"{where}.weights: {path} is not a folder; give a local Hugging Face model folder "
                           "(config.json + model.safetensors) or random:SEED")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{where}.weights: {path} has no config.json; it is not a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{where}.weights: {cfg_path} is not readable JSON: {exc}") from None
    if model_type is not None and config.get("model_type") != model_type:
        raise WeightsError(f"{where}.weights: {cfg_path} is a {config.get('model_type')!r} model, this adapter "
                           f"loads {model_type!r}")
    if not any(path.glob("*.safetensors")) and not (allow_bin and (path / "pytorch_model.bin").is_file()):
        raise WeightsError(f"{where}.weights: {path} has no *.safetensors file; uti loads safetensors only (a .bin "
                           "checkpoint is a pickle). Convert it once where you trust it: "
                           "Model.from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True)")
    return config


def load_local_model(model_cls: type, weights: WeightsSpec, *, arch: Any, where: str, model_type: str,
                     attention: bool):
    """The `weights: /local/folder` branch every Hugging Face adapter shares: `arch:` is refused (the folder
    brings its config.json), the folder is checked, and the model loaded from it alone."""
    if arch is not None:
        raise ConfigError(f"{where}.arch: applies to random weights; {weights.path} brings its config.json")
    check_folder(weights.path, where=where, model_type=model_type)
    return load_pretrained(model_cls, weights.path, where=where, attention=attention)


def load_pretrained(model_cls: type, path: Path, *, where: str, attention: bool):
    """from_pretrained from a local folder only, float32, refusing missing or unexpected weights."""
    # ignore_mismatched_sizes: a weight whose shape differs from config.json's comes back in the loading
    # info (and is refused below, by name) instead of transformers' RuntimeError, which names none.
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "dtype": torch.float32,
                              "output_loading_info": True, "ignore_mismatched_sizes": True}
    if attention:
        kwargs["attn_implementation"] = ATTENTION
    try:
        with no_loading_bars():
            net, info = model_cls.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - every loader failure is one clear line
        raise WeightsError(f"{where}.weights: cannot load a {model_cls.__name__} from {path}: "
                           f"{type(exc).__name__}: {exc}") from None
    problems = {k: v for k, v in (info or {}).items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        listed = "; ".join(f"{k}: {sorted(map(str, v))[:8]}" for k, v in problems.items())
        raise WeightsError(f"{where}.weights: {path} does not hold exactly the weights of {model_cls.__name__} "
                           f"({listed}); is it the right model?")
    return net.eval()


def build_random(make: Callable[[], torch.nn.Module], *, seed: int, cache_key: str,
                 calibrate: Callable[[torch.nn.Module, int], None] | None = None) -> torch.nn.Module:
    """The architecture with fixed-seed weights (and, with `calibrate`, codebooks seeded from encoder
    outputs of fixed signals so that random-weight codes are spread over the codebooks). The state is
    cached (see cached_random_state) because calibration costs seconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make().eval()

    def build() -> dict[str, torch.Tensor]:
        if calibrate is not None:
            with torch.no_grad():  # not inference_mode: its tensors could not be loaded into later
                calibrate(net, seed)
        return net.state_dict()

    state = cached_random_state(cache_key, build)
    net.load_state_dict(state)
    return net.eval()


def random_cache_key(kind: str, config: Any, seed: int, extra: str = "") -> str:
    return f"{kind}|{json.dumps(architecture(config), sort_keys=True)}|seed={seed}|{extra}"


def fingerprint(net: torch.nn.Module) -> str:
    return fingerprint_state_dict(net.state_dict())


def seed_codebook(vectors: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k codebook entries from (N, D) float64 vectors: random picks plus 5% noise, rounded to float16
    precision so that float64 noise from threads or BLAS can never change a stored weight."""
    return seed_codebook_picks(vectors, k, generator)[0]


def seed_codebook_picks(vectors: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """seed_codebook's entries (the same draws) and, for each entry, the row of `vectors` it was picked from."""
    n = vectors.shape[0]
    pick = torch.randperm(n, generator=generator)[:k]
    if pick.numel() < k:
        pick = torch.cat([pick, torch.randint(0, n, (k - pick.numel(),), generator=generator)])
    spread = float(round_to_half(vectors.std().float()[None])[0]) * 0.05
    noise = torch.randn(k, vectors.shape[1], generator=generator, dtype=torch.float64)
    return round_to_half((vectors[pick] + spread * noise).float()), pick


def nearest(vectors: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (euclidean) codebook row for each of (N, D) vectors, in float64."""
    v, b = vectors.double(), book.double()
    return (v.pow(2).sum(1, keepdim=True) - 2 * v @ b.T + b.pow(2).sum(1)[None]).argmin(dim=1)


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def from_uint8_image(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0


# ---- the audio adapter skeleton ------------------------------------------------------------------------
def bucket_rule(pad_to: int, extra: int, hop_length: int) -> str:
    """The time-padding rule of `bucket_samples` in words (a shard header records it): the generic
    batching.PADDING_BUCKETS where the padding unit is one frame, else the exact rule in samples."""
    if pad_to == hop_length and extra == 0:
        return PADDING_BUCKETS
    # a negative extra (NeuCodec's n // hop frames) reads as a subtraction
    plus = (f" + {extra}" if extra > 0 else f" - {-extra}") if extra else ""
    minus = (f" - {extra}" if extra > 0 else f" + {-extra}") if extra else ""
    return (f"time: u = ceil((samples{plus}) / {pad_to}) padding units, rounded up to a multiple of "
            f"2^(bit_length(u)-3) (4 buckets per octave), zero-padded to u * {pad_to}{minus} samples; "
            "batch: filled with all-zero items to encode_batch")


def bucket_samples(n_samples: int, *, pad_to: int, extra: int = 0) -> int:
    """The pass length (samples) of an item of n_samples at encode_batch > 1: its padding units (the model
    pads n + extra samples to a multiple of pad_to) rounded up to their bucket, less `extra`. The model
    takes that length without padding it further and gives at least the item's frames from it."""
    units = -(-(int(n_samples) + extra) // pad_to)
    return bucket_frames(units) * pad_to - extra


def encode_in_passes(codec: AudioCodec, items: Sequence[torch.Tensor], *, bucket: Callable[[int], int],
                     frames_of: Callable[[int], int], run: Callable[[torch.Tensor], np.ndarray],
                     tokens_per_frame: int) -> list[np.ndarray]:
    """The codes (frames_of(n), tokens_per_frame) of each (channels, n) item, in the passes plan_passes
    gives for codec.encode_batch: 1, each item alone at its own length; B > 1, passes of exactly B items
    at `bucket(n)` samples (zero-padded in time, dummy rows all zero), codes trimmed back to the item's
    frames. `run` maps a (batch, channels, length) pass to (batch, frames_of(length), tokens_per_frame)
    codes. Every pass is timed into codec.pass_log."""
    lengths = [int(t.shape[-1]) for t in items]
    passes = plan_passes(lengths, encode_batch=codec.encode_batch, bucket=bucket)

    def one(p: Pass) -> np.ndarray:
        return run(padded_batch(items, p, channels=codec.channels, device=codec.device))

    out: list[np.ndarray] = [np.empty(0)] * len(items)
    for p, codes in timed_passes(passes, codec.pass_log, one, device=codec.device):
        want = (p.batch, frames_of(p.length), tokens_per_frame)
        if tuple(codes.shape) != want:
            raise RuntimeError(f"{codec.name}: a pass of {p.batch} x {p.length} samples (items {list(p.members)}) gave "
                               f"codes {tuple(codes.shape)}, the frame rule says {want}; the model does not frame "
                               "audio as this adapter assumes")
        for j, i in enumerate(p.members):
            out[i] = np.ascontiguousarray(codes[j, : frames_of(lengths[i])], dtype=np.int64)
    return out


class BatchedAudioCodec(AudioCodec):
    """Encode in fixed-shape forward passes (see the module doc and `encode_in_passes`), decode one clip
    at a time. A subclass sets `name`, `device`, `_net`, `_weights`, `_fingerprint` and implements
    `_encode_pass` (a batched forward) or `_encode_one` (one row at a time), `_decode_codes`, `_params`
    and the size properties."""

    name: str
    device: torch.device

    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        """(batch, channels, length) -> local codes (batch, frames, tokens_per_frame) in layout order. By
        default each row through `_encode_one`: still exact, each row is a function of its item alone."""
        return np.stack([np.asarray(self._encode_one(x[j: j + 1])) for j in range(x.shape[0])])

    def _encode_one(self, x: torch.Tensor) -> np.ndarray:
        """(1, channels, n_samples) -> local codes (n_frames, tokens_per_frame) in layout order."""
        raise NotImplementedError

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        """Local codes (n_frames, tokens_per_frame) -> (channels, n) waveform with n >= the clip's samples."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Settings beyond runtime_sizes that change the output (the token space records them)."""
        return {}

    def framing(self) -> dict[str, int]:
        """How frames follow from samples (see uti.token_space.expected_audio_frames): by default the
        clip is padded to whole frames."""
        return {"pad_to": self.hop_length, "extra": 0}

    def expected_frames(self, n_samples: int, extra: dict[str, Any] | None = None) -> int:
        return expected_audio_frames({"hop_length": self.hop_length, "framing": self.framing()}, n_samples)

    def padding_rule(self) -> str:
        if self.encode_batch == 1:
            return super().padding_rule()
        framing = self.framing()
        return bucket_rule(int(framing["pad_to"]), int(framing.get("extra", 0)), self.hop_length)

    def bucket_length(self, n_samples: int) -> int:
        """The samples a clip of n_samples is padded to at encode_batch > 1 (a length of whole padding units)."""
        framing = self.framing()
        return bucket_samples(n_samples, pad_to=int(framing["pad_to"]), extra=int(framing.get("extra", 0)))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def tokens_per_frame(self) -> int:
        return len(self.layout_spec().pattern)

    def describe(self, version: int = VERSION) -> CodecDescriptor:
        params = {**self.runtime_sizes(), **self._params(), "framing": self.framing(), "attention": ATTENTION}
        if version <= BATCHING_IN_DESCRIPTOR_UNTIL:  # what those versions recorded (see uti.token_space)
            params["batching"] = "one clip per forward pass"
        return CodecDescriptor(modality="audio", kind=self.kind, name=self.name, weights=self._weights.label,
                               fingerprint=self._fingerprint, params=params)

    @torch.inference_mode()
    def encode(self, clips) -> list[EncodedAudio]:
        clips = [check_clip(c, i, channels=self.channels, name=self.name, device=self.device) for i, c in enumerate(clips)]
        codes = encode_in_passes(self, clips, bucket=self.bucket_length, frames_of=self.expected_frames,
                                 run=self._encode_pass, tokens_per_frame=self.tokens_per_frame)
        return [EncodedAudio(codes=c, n_samples=int(clip.shape[1])) for c, clip in zip(codes, clips)]

    @torch.inference_mode()
    def decode(self, encoded: EncodedAudio) -> torch.Tensor:
        codes = check_codes(encoded.codes, tokens_per_frame=self.tokens_per_frame,
                            codebook_size=self.codebook_size, name=self.name)
        expected = self.expected_frames(encoded.n_samples)
        if codes.shape[0] != expected:
            raise DecodeRefused(f"{self.name}: {codes.shape[0]} frames for {encoded.n_samples} samples, expected {expected}")
        wav = self._decode_codes(codes).float().cpu()
        # Transposed convolutions with odd strides (DAC 24/16 kHz) give up to a few samples less than
        # frames * hop: within one frame of the clip is accepted (as for EnCodec), never padded.
        want, hop = self.decoded_samples(encoded.n_samples), self.output_hop_length
        if wav.dim() != 2 or wav.shape[0] != self.channels or wav.shape[1] < want - hop:
            raise DecodeRefused(f"{self.name}: decoded {tuple(wav.shape)}, need ({self.channels}, "
                                f">= {want} - one frame of {hop}) at {self.output_sample_rate} Hz")
        return wav[:, :want]


OneClipAudioCodec = BatchedAudioCodec  # the skeleton's earlier name: plugins subclass it


# ---- the image adapter skeleton ------------------------------------------------------------------------
# Why passes have one fixed shape: measured on CPU (1 thread, 4 synthetic images), the quantizer inputs of
# an image encoded in a pass of 4 differ from the same image alone by up to 2.2e-6 (the default VQGAN),
# 1.1e-5 (Emu3 small) and 2.5e-7 (Janus small), enough to flip a code near a decision boundary. Within one
# pass shape, replacing the other images changed an image's inputs by exactly 0: the kernels follow the
# shape, not the neighbours. So with encode_batch B every pass is (B, 3, S, S), and an image's codes are a
# function of the image, B and the device alone (batching.self_check verifies it at actor start).
def padded_images(images: Sequence[np.ndarray], p: Pass, *, size: int) -> np.ndarray:
    """uint8 (p.batch, size, size, 3): the pass's images in its first rows, all-zero dummy images after
    them (PADDING_IMAGES), so the last pass of a call has the shape of a full one."""
    batch = np.zeros((p.batch, size, size, 3), dtype=np.uint8)
    for j, i in enumerate(p.members):
        batch[j] = images[i]
    return batch


def from_uint8_images(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> (B, 3, H, W) float32 in [-1, 1]: for B = 1 the same numbers and memory
    layout as from_uint8_image (a layout change can change the convolution kernel, and so codes)."""
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def encode_image_passes(codec: ImageCodec, images: Sequence[np.ndarray], *, size: int,
                        vectors: Callable[[torch.Tensor], torch.Tensor],
                        nearest_of: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Encode uint8 (size, size, 3) images in the passes of codec.encode_batch (uti.codecs.batching): with
    1 each image alone, else every pass exactly (encode_batch, 3, size, size), the last one filled with
    dummies. `vectors` maps a (B, 3, size, size) pass in [-1, 1] to its quantizer inputs (B, n, dim);
    `nearest_of` maps (B * n, dim) to codebook indices, one float64 matmul for the whole pass (each row's
    argmin is over the codebook axis alone, so no row depends on another). Each image's codes come back
    in `shape`; every pass is timed into codec.pass_log."""
    for i, im in enumerate(images):
        check_image(im, i, size=size)
    passes = plan_passes([size] * len(images), encode_batch=codec.encode_batch, bucket=lambda n: n)

    def run(p: Pass) -> np.ndarray:
        v = vectors(from_uint8_images(padded_images(images, p, size=size), codec.device))
        codes = nearest_of(v.reshape(-1, v.shape[-1])).reshape(p.batch, -1)
        return codes[: len(p.members)].cpu().numpy()

    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(images)
    for p, codes in timed_passes(passes, codec.pass_log, run, device=codec.device):
        for j, i in enumerate(p.members):
            out[i] = codes[j].reshape(shape).astype(np.int64)
    return out


class ImagePassCodec(ImageCodec):
    """Encode in fixed-shape passes of `encode_batch` images (see encode_image_passes), nearest codes
    searched in float64 (a code never depends on a BLAS kernel's summation order, and with the pass
    shape fixed never on which images share the pass); decode one image at a time. A subclass sets
    `name`, `device`, `_net`, `_weights`, `_fingerprint`, `_proc`, `_grid` and implements `_vectors`,
    `_book`, `_decode_codes`, `_params` and `codebook_size`; `_cosine` says whether the quantizer
    compares l2-normalized vectors."""

    name: str
    device: torch.device
    _cosine: bool = False

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the quantizer's input vectors (B, grid_h * grid_w, dim), row-major."""
        raise NotImplementedError

    def _book(self) -> torch.Tensor:
        """The codebook (codebook_size, dim) the quantizer compares with."""
        raise NotImplementedError

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(grid_h, grid_w) long codes -> (3, H, W) in [-1, 1]."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def proc_size(self) -> tuple[int, int]:
        return (self._proc, self._proc)

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    def describe(self, version: int = VERSION) -> CodecDescriptor:
        return CodecDescriptor(modality="image", kind=self.kind, name=self.name, weights=self._weights.label,
                               fingerprint=self._fingerprint,
                               params={**self.runtime_sizes(), "channels": 3, "resize": "short_side_center_crop",
                                       "pixels": "uint8 / 127.5 - 1", "attention": ATTENTION,
                                       "quantizer": "nearest by cosine, float64" if self._cosine else
                                       "nearest by euclidean distance, float64", **self._params()})

    def _probe_grid(self) -> tuple[int, int]:
        """The grid read from the model: encode a blank image (runtime introspection)."""
        with torch.inference_mode():
            n = self._vectors(torch.zeros(1, 3, self._proc, self._proc, device=self.device)).shape[1]
        side = int(round(n ** 0.5))
        if side * side != n:
            raise WeightsError(f"{self.name}: a {self._proc}px image gives {n} codes, not a square grid")
        return (side, side)

    def _nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, dim) quantizer inputs -> (N,) codes. The cosine path normalizes each row by its own norm, so
        a row's code still depends on that row alone."""
        book = self._book()
        if self._cosine:
            vectors = torch.nn.functional.normalize(vectors.double(), dim=1)
            book = torch.nn.functional.normalize(book.double(), dim=1)
        return nearest(vectors, book)

    @torch.inference_mode()
    def encode(self, images) -> list[np.ndarray]:
        return encode_image_passes(self, images, size=self._proc, vectors=self._vectors, nearest_of=self._nearest,
                                   shape=self._grid)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.shape != self._grid:
            raise DecodeRefused(f"{self.name}: codes must have the grid shape {self._grid}, got {codes.shape}")
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.codebook_size:
            raise DecodeRefused(f"{self.name}: codes outside [0, {self.codebook_size})")
        img = to_uint8_image(self._decode_codes(torch.from_numpy(codes.astype(np.int64)).to(self.device)))
        if img.shape != (self._proc, self._proc, 3):
            raise DecodeRefused(f"{self.name}: decoded image is {img.shape}, expected ({self._proc}, {self._proc}, 3)")
        return img


OneImageCodec = ImagePassCodec  # the name adapters outside this repository may import


def calibration_vectors(vectors_of: Callable[[torch.Tensor], torch.Tensor], size: int, seed: int) -> torch.Tensor:
    """Quantizer-input vectors (N, dim) float64 of 8 fixed synthetic `size` px scenes, to seed a random
    codebook from. `vectors_of` maps (1, 3, size, size) to (1, n, dim); one scene per call, so the seeded
    codebook (and the weights fingerprint) never depends on a batch."""
    from uti.codecs.vq_image import calibration_images

    images = calibration_images(size, 8, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    vectors = [vectors_of(x[i: i + 1]) for i in range(len(images))]
    return torch.cat([v.reshape(-1, v.shape[-1]) for v in vectors]).double()
