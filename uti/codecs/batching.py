"""The encode policy: how many items one forward pass takes, how they are padded, and the numerics
(device type, dtype, TF32) that made a shard's tokens. This module owns that policy.

Why a fixed batch shape. A code is an argmin over distances; a 1e-7 change in the latent flips codes
near a decision boundary. Kernels are chosen by the shape of the whole tensor (cuDNN, cuBLAS and
oneDNN alike), so an item's codes may change with the batch it shares a pass with, or with how many
items that batch holds (transformers#35166, sglang-omni#749). Once the shape is fixed, they do not.
So with `encode_batch` B > 1 every forward pass has exactly the shape (B, ..., bucket length):

* an item's bucket is a function of its own length alone (`bucket_frames`: 4 buckets per octave of
  frames, at most 25% padding), and it is zero-padded in time to that length, so the codes of
  non-causal codecs (whose tail frames see the padding) are still a function of the item alone;
* the batch dimension is filled up with all-zero dummy items, so the pass of a bucket's last few
  items has the same shape as a full one.

With B = 1 (the default: on a CPU batching measured no gain) every item is encoded alone at its own
length, as it always was. Each actor checks at start, on its own device, that its codec's codes do not
depend on batch composition (`self_check`); a codec whose codes do is refused, never used.

What the policy changes is numerics, not what a token means: tokens of B = 1 and B = 32 decode alike
and may be mixed in training. So the policy is not part of the token-space ID; it is recorded in every
shard header and in job.json, and verify re-encodes with the recorded policy (docs/FORMAT.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from uti.buckets import bucket_frames  # noqa: F401 - the rule's owner is uti.buckets (torch-free: the driver uses it)
from uti.errors import ConfigError, UTIError

POLICY_FORMAT = "uti.encode_policy"
POLICY_VERSION = 1
PADDING_NONE = "none: one item per forward pass at its own length"
PADDING_BUCKETS = ("time: zero-padded to its bucket (frames rounded up to a multiple of 2^(bit_length(frames)-3), "
                   "4 buckets per octave); batch: filled with all-zero items to encode_batch")
PADDING_IMAGES = "batch: filled with all-zero images to encode_batch (images share one size)"
DEFAULT_GPU_ENCODE_BATCH = 16  # a documented guess until bench_gpu has measured the best value on a GPU
MAX_ENCODE_BATCH = 1024
PREPARE_READER, PREPARE_DEVICE = "reader", "device"
PREPARE_ON = (PREPARE_READER, PREPARE_DEVICE)


class BatchDependenceError(UTIError):
    """A codec's codes changed with the batch an item was encoded in: its tokens would depend on scheduling."""


def check_encode_batch(value: Any, *, where: str) -> int | None:
    """None (the device's default) or a whole number in 1..MAX_ENCODE_BATCH."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ENCODE_BATCH:
        raise ConfigError(f"{where}: must be a whole number from 1 to {MAX_ENCODE_BATCH}, got {value!r}")
    return value


def device_type(device: Any) -> str:
    """"cpu", "cuda", ... of a torch.device or a device string ("cuda:3" computes as "cuda" does)."""
    return str(getattr(device, "type", None) or device or "cpu").split(":")[0]


def default_encode_batch(device_type: str) -> int:
    """1 on a CPU (batching measured 0.49x-0.91x the one-item loop there), DEFAULT_GPU_ENCODE_BATCH elsewhere."""
    return 1 if device_type == "cpu" else DEFAULT_GPU_ENCODE_BATCH


@dataclass(frozen=True, kw_only=True)
class EncodePolicy:
    """The numerics that made one modality's tokens (a shard header's `encode_policy[modality]`)."""

    device_type: str  # "cpu", "cuda", ...: the type, never the index (cuda:0 and cuda:3 compute alike)
    dtype: str = "float32"
    tf32: bool = False
    encode_batch: int = 1
    padding: str = PADDING_NONE
    # Where resampling, channel mixing and image resizing ran: "reader" (CPU read tasks: torchaudio on the
    # CPU, PIL for images) or "device" (the codec actor, on device_type; uti.preprocess). They are
    # different numerics (an image resized by torch on a GPU is not PIL's), so verify prepares the same way.
    prepare_on: str = PREPARE_READER
    torch: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> "EncodePolicy":
        if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
            raise ConfigError(f"{where}: not an encode policy (format {POLICY_FORMAT!r})")
        if data.get("version") != POLICY_VERSION:
            raise ConfigError(f"{where}: encode policy version {data.get('version')!r} is not supported "
                              f"(this uti reads {POLICY_VERSION}); upgrade uti")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"format", "version"})
        if unknown:
            raise ConfigError(f"{where}: unknown encode policy field(s) {unknown}")
        policy = cls(**{k: v for k, v in data.items() if k in names})
        check_encode_batch(policy.encode_batch, where=f"{where}.encode_batch")
        if policy.prepare_on not in PREPARE_ON:
            raise ConfigError(f"{where}.prepare_on: {policy.prepare_on!r} is not one of {', '.join(PREPARE_ON)}")
        return policy

    def numerics(self) -> dict[str, Any]:
        """What must be equal for two encodes to be bit-identical (all but the torch version, which is
        reported: a kernel change between releases shows up as a retokenize difference)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "torch"}

    def differences(self, other: "EncodePolicy") -> list[str]:
        mine, theirs = self.numerics(), other.numerics()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in sorted(mine) if mine[k] != theirs[k]]


def exact_numerics() -> None:
    """float32 with TF32 off and deterministic cuDNN: argmin code assignment flips under reduced precision
    (bf16 flips about two thirds of WavTokenizer's codes) and benchmark-mode cuDNN picks kernels by timing."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("highest")


# ---- buckets and fixed-shape passes ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Pass:
    """One forward pass: `members` (indices into the items, at most encode_batch) at `length` (in the
    caller's unit: samples, frames or segments), padded with encode_batch - len(members) dummy items."""

    length: int
    members: tuple[int, ...]
    batch: int

    @property
    def dummies(self) -> int:
        return self.batch - len(self.members)


def plan_passes(lengths: Sequence[int], *, encode_batch: int, bucket: Callable[[int], int]) -> list[Pass]:
    """The forward passes for items of `lengths`: with encode_batch 1 each item alone at its own length;
    else items grouped by `bucket(length)` (a function of the item alone), in item order within a
    bucket, cut into passes of encode_batch. Which items share a pass never changes an item's codes
    (fixed shape), only how many passes a chunk takes."""
    if encode_batch == 1:
        return [Pass(length=int(n), members=(i,), batch=1) for i, n in enumerate(lengths)]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(bucket(int(n))), []).append(i)
    passes = []
    for length in sorted(groups):
        members = groups[length]
        for a in range(0, len(members), encode_batch):
            passes.append(Pass(length=length, members=tuple(members[a: a + encode_batch]), batch=encode_batch))
    return passes


def padded_batch(items: Sequence[Any], p: Pass, *, channels: int, device: Any) -> Any:
    """A (batch, channels, length) float32 zero tensor with item j of the pass in row j (items are
    (channels, n <= length) tensors; rows past the members stay zero: the dummy items)."""
    import torch

    x = torch.zeros(p.batch, channels, p.length, device=device, dtype=torch.float32)
    for j, i in enumerate(p.members):
        clip = items[i]
        x[j, :, : clip.shape[-1]] = clip
    return x


@dataclass
class PassLog:
    """What an adapter's passes did since the last `take` (the actor's busy and items-per-pass figures)."""

    passes: int = 0
    items: int = 0
    dummies: int = 0
    seconds: float = 0.0
    sizes: dict[int, int] = dataclasses.field(default_factory=dict)  # real items per pass -> passes

    def add(self, p: Pass, seconds: float) -> None:
        self.passes += 1
        self.items += len(p.members)
        self.dummies += p.dummies
        self.seconds += seconds
        self.sizes[len(p.members)] = self.sizes.get(len(p.members), 0) + 1

    def take(self) -> "PassLog":
        out = PassLog(passes=self.passes, items=self.items, dummies=self.dummies, seconds=self.seconds,
                      sizes=dict(self.sizes))
        self.passes = self.items = self.dummies = 0
        self.seconds = 0.0
        self.sizes = {}
        return out


def timed_passes(passes: Sequence[Pass], log: PassLog, run: Callable[[Pass], Any], *, device: Any) -> Iterator[tuple[Pass, Any]]:
    """Run each pass, timing it (synchronizing the device, so GPU time is not credited to the next pass)."""
    import time

    import torch

    for p in passes:
        t0 = time.perf_counter()
        out = run(p)
        if getattr(device, "type", "cpu") == "cuda":
            torch.cuda.synchronize(device)
        log.add(p, time.perf_counter() - t0)
        yield p, out


# ---- the self-check ------------------------------------------------------------------------------------
PROBE_SEED = 20261204


def probe_clips(sample_rate: int, channels: int, hop_length: int, *, n: int = 3) -> list[Any]:
    """n fixed noise-and-tone clips of different lengths inside one bucket, plus one in another bucket."""
    import torch

    g = torch.Generator().manual_seed(PROBE_SEED)
    base = bucket_frames(16) * hop_length  # a bucket boundary: the probes share it
    lengths = [base - k * (hop_length // 2 + 1) for k in range(n)] + [base * 2 + hop_length]
    clips = []
    for length in lengths:
        t = torch.arange(length, dtype=torch.float32) / sample_rate
        tone = 0.3 * torch.sin(2 * np.pi * (220 + 40 * len(clips)) * t)
        clips.append((tone + 0.1 * torch.randn(length, generator=g)).repeat(channels, 1))
    return clips


def probe_images(size: int, *, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(PROBE_SEED)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@dataclass(frozen=True, kw_only=True)
class SelfCheck:
    """The outcome of `self_check`: items compared, codes compared and codes that differed."""

    codec: str
    device: str
    encode_batch: int
    items: int
    codes: int
    differing: int

    @property
    def ok(self) -> bool:
        return self.differing == 0


def self_check(codec: Any) -> SelfCheck | None:
    """Encode the probe set on the codec's own device twice: each probe alone (its pass filled with
    dummies) and all probes together in reverse order. Equal codes or BatchDependenceError naming the
    codec, the device and the flag to change. None for encode_batch 1 (one composition only)."""
    batch = int(getattr(codec, "encode_batch", 1))
    if batch == 1:
        return None
    if codec.modality == "audio":
        probes = probe_clips(codec.sample_rate, codec.channels, codec.hop_length)
        alone = [codec.encode([p])[0].codes for p in probes]
        together = [e.codes for e in reversed(codec.encode(list(reversed(probes))))]
    else:
        probes = probe_images(codec.proc_size[0])
        alone = [codec.encode([p])[0] for p in probes]
        together = list(reversed(codec.encode(list(reversed(probes)))))
    differing = sum(int((np.asarray(a) != np.asarray(b)).sum()) if np.shape(a) == np.shape(b) else int(np.size(a))
                    for a, b in zip(alone, together))
    total = sum(int(np.size(a)) for a in alone)
    device = str(getattr(codec, "device", "cpu"))
    result = SelfCheck(codec=getattr(codec, "name", codec.kind), device=device, encode_batch=batch,
                       items=len(probes), codes=total, differing=differing)
    if not result.ok:
        raise BatchDependenceError(
            f"{result.codec} on {device}: with encode_batch {batch}, {differing} of {total} codes of a fixed probe set "
            f"differ between encoding each probe alone and all together; its tokens would depend on which items "
            f"share a forward pass. Use --encode-batch 1 (or encode_batch: 1 in the codec config)")
    return result
