"""EnCodec (the `encodec` package) as the audio codec: 24 kHz mono (causal) and 48 kHz stereo
(non-causal, 1 s segments with per-segment normalization).

Batching rule (uti.codecs.batching): a clip's codes never depend on what else is in its batch, bit for
bit. Measured on CPU: the convolutions give identical floats for any batch size at the same input
length but not for other lengths (oneDNN picks kernels by shape), and the LSTM differs between batch
sizes; a 3e-8 difference is enough to flip codes in the deep RVQ levels. So a pass's shape is fixed
by the policy, never by its items:
* encode_batch 1: each item alone at its own length (24 kHz: a clip zero-padded to whole frames;
  48 kHz: each of the model's segments as it is);
* encode_batch B > 1: passes of exactly (B, channels, bucket length), the encoder (LSTM included) and
  the quantizer over the whole pass, dummy rows all zero. 24 kHz: a clip is zero-padded to its bucket
  of frames (batching.bucket_frames). 48 kHz: the items are the segments, each normalized by the RMS of
  its own samples first; a full 1 s segment runs at its own length, a clip's shorter last segment is
  zero-padded to its bucket (at most a full segment). The model is non-causal, so padding changes the
  tail frames of a padded item: that is why the rule is recorded (`padding_rule`).
On CPU batching buys nothing measurable for convolutions over long sequences (encode_batch 1 is the
CPU default); on GPU the passes of a bucket keep the device busy.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from uti.codecs.base import AudioCodec, CodecVariant, EncodedAudio, check_clip
from uti.codecs.batching import bucket_frames
from uti.codecs.hf_common import bucket_rule, bucket_samples, encode_in_passes
from uti.codecs.weights import (WeightsSpec, cached_random_state, calibration_signal, fingerprint_state_dict,
                                parse_weights, resolve_device, round_to_half)
from uti.config import AudioConfig
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.token_space import VERSION, CodecDescriptor

log = logging.getLogger(__name__)

_CHECKPOINTS = {
    "encodec_24khz": "encodec_24khz-d7cc33bc.th",
    "encodec_48khz": "encodec_48khz-7e698e3e.th",
}
_ROOT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"


def _build_architecture(name: str):
    import warnings

    from encodec import EncodecModel

    warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)

    builder = {"encodec_24khz": EncodecModel.encodec_model_24khz, "encodec_48khz": EncodecModel.encodec_model_48khz}
    return builder[name](pretrained=False)


def _seeded_architecture(name: str, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_architecture(name)


def _random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    net = _seeded_architecture(name, seed)
    _init_codebooks_from_signal(net, seed=seed)
    return net.state_dict()


class EncodecAudioCodec(AudioCodec):
    kind = "encodec"
    settings = AudioConfig

    @classmethod
    def from_settings(cls, settings: AudioConfig, *, device: str = "cpu") -> "EncodecAudioCodec":
        return cls(model=settings.model, bandwidth=settings.bandwidth, weights=settings.weights, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        # The encodec package's published architectures (a model's own sizes are read when it is loaded).
        return [
            CodecVariant(model="encodec_24khz", sizes={"sample_rate": 24000, "channels": 1, "codebook_size": 1024,
                                                       "frame_rate": 75.0, "n_q": {"1.5": 2, "3": 4, "6": 8, "12": 16, "24": 32},
                                                       "layout": "frame_major"}, note="n_q by bandwidth (kbps)"),
            CodecVariant(model="encodec_48khz", sizes={"sample_rate": 48000, "channels": 2, "codebook_size": 1024,
                                                       "frame_rate": 150.0, "n_q": {"3": 2, "6": 4, "12": 8, "24": 16},
                                                       "layout": "frame_major"}, note="n_q by bandwidth (kbps)"),
        ]

    def __init__(self, *, model: str = "encodec_24khz", bandwidth: float = 6.0, weights: str = "random:0",
                 device: str = "cpu"):
        if model not in _CHECKPOINTS:
            raise ConfigError(f"audio.model: {model!r} is not one of {sorted(_CHECKPOINTS)}")
        self.name = model
        self._weights = parse_weights(weights, where="audio.weights")
        net = _seeded_architecture(model, self._weights.seed if self._weights.kind == "random" else 0)
        if self._weights.kind == "random":
            seed = int(self._weights.seed)
            net.load_state_dict(cached_random_state(f"encodec|{model}|seed={seed}", lambda: _random_state(model, seed)))
        else:
            net.load_state_dict(_load_state(self._weights, model))
        if bandwidth not in net.target_bandwidths:
            raise ConfigError(
                f"audio.bandwidth: {bandwidth} kbps is not supported by {model}; choose one of {net.target_bandwidths}"
            )
        net.set_target_bandwidth(bandwidth)
        self.bandwidth = float(bandwidth)
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        # Read from the model, never from a table: this is the runtime introspection the token space checks.
        self._n_q = int(net.quantizer.get_num_quantizers_for_bandwidth(net.frame_rate, bandwidth))
        self._fingerprint = fingerprint_state_dict(net.state_dict())

    # ---- sizes read from the model --------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._net.sample_rate)

    @property
    def channels(self) -> int:
        return int(self._net.channels)

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantizer.bins)

    @property
    def frame_rate(self) -> float:
        return float(self._net.frame_rate)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self._net.encoder.ratios))

    @property
    def segment_length(self) -> int | None:
        return self._net.segment_length

    @property
    def segment_stride(self) -> int | None:
        return self._net.segment_stride

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self, version: int = VERSION) -> CodecDescriptor:
        # The same in versions 1 to 3 (3 adds the layout, see AudioCodec.descriptor): the model name fixes the architecture, the fingerprint the weights,
        # and bandwidth (-> n_q), segmenting and normalization are all recorded.
        return CodecDescriptor(
            modality="audio", kind="encodec", name=self.name, weights=self._weights.label,
            fingerprint=self._fingerprint,
            params={**self.runtime_sizes(), "bandwidth": self.bandwidth,
                    "segment_length": self.segment_length, "segment_stride": self.segment_stride,
                    "normalize": bool(self._net.normalize)},
        )

    def runtime_sizes(self) -> dict[str, Any]:
        return {**super().runtime_sizes(), "bandwidth": self.bandwidth}

    # ---- frames ---------------------------------------------------------------------------------
    def _segments(self, n_samples: int) -> list[tuple[int, int]]:
        seg, stride = self.segment_length, self.segment_stride
        if seg is None:
            return [(0, n_samples)]
        return [(off, min(seg, n_samples - off)) for off in range(0, n_samples, stride)]

    def expected_frames(self, n_samples: int, extra: dict[str, Any] | None = None) -> int:
        return sum(-(-length // self.hop_length) for _, length in self._segments(n_samples))

    # ---- encode ---------------------------------------------------------------------------------
    def _check_clip(self, clip: torch.Tensor, index: int) -> torch.Tensor:
        return check_clip(clip, index, channels=self.channels, name=self.name, device=self.device)

    def padding_rule(self) -> str:
        if self.encode_batch == 1:
            return super().padding_rule()
        if self.segment_length is None:
            return bucket_rule(self.hop_length, 0, self.hop_length)
        hop, full = self.hop_length, self._frames(self.segment_length)
        return (f"segments: each clip cut into segments of {self.segment_length} samples every {self.segment_stride}, "
                f"each divided by 1e-8 + the RMS of its own channel mean; a segment of f frames of {hop} samples is "
                f"zero-padded to min(f rounded up to a multiple of 2^(bit_length(f)-3), {full}) frames (a full "
                "segment: its own length); batch: filled with all-zero segments to encode_batch")

    def _frames(self, n_samples: int) -> int:
        """Frames the encoder gives an input of n_samples (a whole clip at 24 kHz, one segment at 48 kHz)."""
        return -(-int(n_samples) // self.hop_length)

    def bucket_length(self, n_samples: int) -> int:
        """The samples an item (24 kHz: a clip; 48 kHz: a segment) of n_samples is padded to at
        encode_batch > 1: its frames rounded up to their bucket (a segment: at most a full one)."""
        if self.segment_length is None:
            return bucket_samples(n_samples, pad_to=self.hop_length)
        full = self._frames(self.segment_length)
        return min(bucket_frames(self._frames(n_samples)), full) * self.hop_length

    @torch.inference_mode()
    def encode(self, clips: Sequence[torch.Tensor]) -> list[EncodedAudio]:
        clips = [self._check_clip(c, i) for i, c in enumerate(clips)]
        if not clips:
            return []
        if self.segment_length is None:
            return self._encode_whole(clips)
        return self._encode_segmented(clips)

    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        """(batch, channels, length) -> (batch, frames, n_q) codes: the encoder and the quantizer over the pass."""
        emb = self._net.encoder(x)  # (batch, dim, frames)
        codes = self._net.quantizer.encode(emb, self._net.frame_rate, self.bandwidth)  # (n_q, batch, frames)
        return codes.permute(1, 2, 0).cpu().numpy()

    def _encode_frames_pass(self, x: torch.Tensor) -> np.ndarray:
        """A pass zero-padded to whole frames first (a bucket length is whole frames already)."""
        x = torch.nn.functional.pad(x, (0, self._frames(x.shape[-1]) * self.hop_length - x.shape[-1]))
        return self._encode_pass(x)

    def _encode_whole(self, clips: list[torch.Tensor]) -> list[EncodedAudio]:
        codes = encode_in_passes(self, clips, bucket=self.bucket_length, frames_of=self._frames,
                                 run=self._encode_frames_pass, tokens_per_frame=self.n_q)
        return [EncodedAudio(codes=c, n_samples=int(clip.shape[1])) for c, clip in zip(codes, clips)]

    def _encode_segmented(self, clips: list[torch.Tensor]) -> list[EncodedAudio]:
        segments: list[torch.Tensor] = []
        scales: list[float] = []
        spans: list[range] = []  # each clip's segments, in time order
        for clip in clips:
            start = len(segments)
            for off, length in self._segments(clip.shape[1]):
                x, scale = self._normalized(clip[:, off: off + length])
                segments.append(x)
                scales.append(scale)
            spans.append(range(start, len(segments)))
        codes = encode_in_passes(self, segments, bucket=self.bucket_length, frames_of=self._frames,
                                 run=self._encode_pass, tokens_per_frame=self.n_q)
        out = []
        for clip, mine in zip(clips, spans):
            out.append(EncodedAudio(
                codes=np.concatenate([codes[k] for k in mine], axis=0), n_samples=int(clip.shape[1]),
                extra={"segment_frames": [int(codes[k].shape[0]) for k in mine], "scales": [scales[k] for k in mine]},
            ))
        return out

    def _normalized(self, segment: torch.Tensor) -> tuple[torch.Tensor, float]:
        """A (channels, n) segment divided by its scale (1e-8 + RMS of the channel mean, on its own samples:
        padding added later never changes it), and the scale (1.0 without normalization)."""
        x = segment.contiguous()[None]
        if not self._net.normalize:
            return x[0], 1.0
        power = x.mean(dim=1, keepdim=True).pow(2)  # (1, 1, n)
        # Reduced with a zero row beside it: a CPU reduction to one output of 32768 or more elements is
        # split across threads (its float then depends on the thread count); to two outputs, each is
        # summed by one thread in order, as with one thread.
        scale = 1e-8 + torch.cat([power, torch.zeros_like(power)]).mean(dim=2, keepdim=True)[:1].sqrt()
        return (x / scale)[0], float(scale.item())

    # ---- decode ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, encoded: EncodedAudio) -> torch.Tensor:
        codes = np.asarray(encoded.codes)
        if codes.ndim != 2 or codes.shape[1] != self.n_q:
            raise DecodeRefused(f"{self.name}: codes must be (n_frames, {self.n_q}), got {codes.shape}")
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.codebook_size:
            raise DecodeRefused(f"{self.name}: codes outside [0, {self.codebook_size})")
        expected = self.expected_frames(encoded.n_samples)
        if codes.shape[0] != expected:
            raise DecodeRefused(
                f"{self.name}: {codes.shape[0]} frames for {encoded.n_samples} samples, expected {expected}"
            )
        t = torch.from_numpy(codes.astype(np.int64)).to(self.device)
        if self.segment_length is None:
            wav = self._net.decode([(t.T[None], None)])
        else:
            seg_frames = encoded.extra.get("segment_frames")
            scales = encoded.extra.get("scales")
            n_segs = len(self._segments(encoded.n_samples))
            if seg_frames is None or scales is None or len(seg_frames) != n_segs or len(scales) != n_segs \
                    or sum(seg_frames) != codes.shape[0]:
                raise DecodeRefused(
                    f"{self.name}: meta needs segment_frames and scales for {n_segs} segments "
                    f"summing to {codes.shape[0]} frames"
                )
            frames, start = [], 0
            for n, s in zip(seg_frames, scales):
                frames.append((t[start: start + n].T[None], torch.tensor([[float(s)]], device=self.device)))
                start += n
            wav = self._net.decode(frames)
        wav = wav[0, :, : encoded.n_samples].float().cpu()
        if abs(wav.shape[-1] - encoded.n_samples) > self.hop_length:
            raise DecodeRefused(f"{self.name}: decoded {wav.shape[-1]} samples, meta says {encoded.n_samples}")
        return wav


def _load_state(spec: WeightsSpec, model: str) -> dict[str, torch.Tensor]:
    """A local .th file (or a directory holding the official file name), else the torch hub cache,
    else a download. Always weights_only: a checkpoint must never execute code."""
    checkpoint = _CHECKPOINTS[model]
    if spec.kind == "path":
        path = spec.path / checkpoint if spec.path.is_dir() else spec.path
        if not path.is_file():
            raise WeightsError(
                f"audio.weights: {path} does not exist; download {_ROOT_URL}{checkpoint} there, "
                "or use 'pretrained' (torch hub cache) or 'random:SEED'"
            )
        return _load_checked(path, checkpoint)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / checkpoint
    if cached.is_file():
        return _load_checked(cached, checkpoint)
    try:
        return torch.hub.load_state_dict_from_url(
            _ROOT_URL + checkpoint, map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as exc:  # no network is the common case on clusters
        raise WeightsError(
            f"audio.weights: 'pretrained' {model} is not in the torch hub cache ({cached}) and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). Copy {checkpoint} to {cached} or pass its path"
        ) from None


def _load_checked(path: Path, official_name: str) -> dict[str, torch.Tensor]:
    if path.name == official_name:  # the official file names carry a SHA-256 prefix
        expected = official_name.rsplit("-", 1)[1].split(".")[0]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if not h.hexdigest().startswith(expected):
            raise WeightsError(f"{path}: SHA-256 does not start with {expected}; the file is corrupt or not {official_name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load as a weights-only state dict: {exc}") from None


_round_to_half = round_to_half  # the name this module used before it moved to uti.codecs.weights


@torch.inference_mode()
def _init_codebooks_from_signal(net, *, seed: int) -> None:
    """Random weights but meaningful codes: seed each RVQ level's codebook with (residual) encoder
    outputs of a fixed calibration signal, as k-means++-style init would, all from `seed`.

    The calibration pass runs in float64 and the codebooks are rounded to
    float16 precision (see _round_to_half), so the result does not depend on threads or hardware."""
    frames_wanted = int(net.quantizer.bins) + 256
    seconds = frames_wanted / net.frame_rate
    x = calibration_signal(net.sample_rate, net.channels, seconds, seed).double()
    if net.normalize:
        x = x / (1e-8 + x.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt())
    # In place and back: float32 -> float64 -> float32 is exact (weight_norm modules cannot be deep-copied).
    net.encoder.double()
    try:
        residual = net.encoder(x)[0].T.contiguous()  # (frames, dim), float64
    finally:
        net.encoder.float()
    g = torch.Generator().manual_seed(seed + 1)
    for layer in net.quantizer.vq.layers:
        book = layer._codebook
        k = book.codebook_size
        pick = torch.randperm(residual.shape[0], generator=g)[:k]
        if pick.numel() < k:
            pick = torch.cat([pick, torch.randint(0, residual.shape[0], (k - pick.numel(),), generator=g)])
        spread = float(_round_to_half(residual.std().float()[None])[0]) * 0.05
        noise = torch.randn(k, residual.shape[1], generator=g, dtype=torch.float64)
        embed = _round_to_half((residual[pick] + spread * noise).float())
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)
        e = embed.double()
        nearest = (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ e.T + e.pow(2).sum(1)[None]).argmin(dim=1)
        residual = residual - e[nearest]
