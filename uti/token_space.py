"""The token space: one global ID space of contiguous ranges (special, text, image, audio levels).

It is serialized as canonical JSON; its ID is the SHA-256 of those bytes. Everything that carries
tokens (shards, samples, checkpoints, reports) carries the ID, and anything loaded with another ID
is refused with both IDs and a diff of what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from uti.atomic import atomic_write
from uti.errors import RuntimeSizeMismatch, TokenSpaceError, TokenSpaceMismatch

log = logging.getLogger(__name__)

FORMAT = "uti.token_space"
# Version 2 records everything that changes a codec's output: a Hugging Face tokenizer's whole
# definition (not its folder name) and an image model's architecture config. Version 3 (this one) also
# records each media codec's token layout (`codecs.<modality>.layout`: which range every position of a
# media sequence belongs to), because codecs whose levels run at different rates (SNAC) cannot be read
# as frame-major; the one global `level_order` of versions 1 and 2 is gone. Versions 1 and 2 are still
# read (their layout is frame-major audio and a row-major image grid), and codecs are compared with
# them by their own version's recipe (see CodecDescriptor and UnifiedTokenizer). Spaces of different
# versions never have the same ID. Version 4 takes the encode batching out of the codec descriptors (the
# Hugging Face adapters' `batching` param): how many items a forward pass takes changes numerics, not what
# a token means, so it is the shard header's encode policy (uti.codecs.batching); version 3 spaces are
# compared with the descriptor they recorded, `batching` included.
VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
BATCHING_IN_DESCRIPTOR_UNTIL = 3  # the last version whose descriptors record `batching`
JSON_NAME = "token_space.json"
SHA_NAME = "token_space.sha256"
LEVEL_ORDER = "frame_major"  # versions 1 and 2: frame 0 levels 0..n_q-1, then frame 1, ...
LAYOUT_VERSION = 3  # the first version that records layouts

# Order is part of the ABI: IDs are assigned in this order. New tags go into reserved slots.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>", "<unk>",
    "<bot>", "<eot>", "<boi>", "<eoi>", "<boa>", "<eoa>",
    "<a2t>", "<t2a>", "<i2t>", "<t2i>", "<txt>",
)
BOUNDARY_PAIRS = {"text": ("<bot>", "<eot>"), "image": ("<boi>", "<eoi>"), "audio": ("<boa>", "<eoa>")}


def canonical_json(obj: Any) -> bytes:
    """UTF-8, sorted keys, no insignificant whitespace: the one byte form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_sha(sha: bytes) -> str:
    """The SHA-256 a token_space.sha256 records: its first field, "" when it has none."""
    fields = sha.decode("utf-8", "replace").split()
    return fields[0] if fields else ""


@dataclass(frozen=True, kw_only=True)
class Range:
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        """One past the last ID."""
        return self.start + self.size

    def __contains__(self, token_id: int) -> bool:
        return self.start <= token_id < self.end

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start, "size": self.size}


@dataclass(frozen=True, kw_only=True)
class CodecDescriptor:
    """What the token space records about one codec: identity, weights and every size decode needs."""

    modality: str  # "text" | "image" | "audio"
    kind: str  # "byte", "hf", "vqgan", "encodec"
    name: str
    weights: str  # "random:SEED", "pretrained", or "none" (file-free)
    # SHA-256 over what defines the codec's output: the weights' tensors; for a Hugging Face tokenizer
    # its whole loaded definition (version 1: only its vocabulary)
    fingerprint: str
    # every size decode needs, and every setting that changes the codec's output (version 2: an image
    # model's architecture config; a HF tokenizer's class, options and per-component hashes)
    params: Mapping[str, Any] = field(default_factory=dict)
    # version 3, media codecs: how the codes are laid out in a sequence (None: text, or versions 1-2)
    layout: "LayoutSpec | None" = None

    def to_dict(self) -> dict:
        out = {
            "modality": self.modality, "kind": self.kind, "name": self.name,
            "weights": self.weights, "fingerprint": self.fingerprint, "params": dict(self.params),
        }
        if self.layout is not None:
            out["layout"] = self.layout.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CodecDescriptor":
        _require_keys(data, ("modality", "kind", "name", "weights", "fingerprint", "params"), "codec descriptor")
        layout = LayoutSpec.from_dict(data["layout"], where=f"codecs.{data['modality']}.layout") \
            if "layout" in data else None
        return cls(**{k: data[k] for k in ("modality", "kind", "name", "weights", "fingerprint")},
                   params=dict(data["params"]), layout=layout)


# ---- token layouts ----------------------------------------------------------------------------------
# What each layout kind means; the `pattern` of a LayoutSpec says, for each position inside one frame,
# the index of the level (range) its token belongs to. A media sequence is n_frames such frames.
LAYOUT_KINDS: Mapping[str, tuple[str, str]] = {
    # kind: (modality, meaning)
    "frame_major": ("audio", "per frame one code of each level 0..n_q-1, in level order (EnCodec, Mimi, DAC)"),
    "fsq": ("audio", "per frame one finite-scalar-quantized code: a single level (X-codec2)"),
    "multirate": ("audio", "levels at different time rates, grouped per frame of the coarsest level: its one "
                           "code, then level 1's codes of that span, then level 2's ... (SNAC)"),
    "grid2d": ("image", "one code per grid cell, row-major; a 'frame' is one cell (VQGAN, Emu3, Janus)"),
    "causal1d": ("image", "a fixed number of codes (`n_tokens`) in the causal order the tokenizer made them, "
                          "not a grid; a 'frame' is one code (SEED)"),
}


@dataclass(frozen=True, kw_only=True)
class LayoutSpec:
    """How a media codec's codes are laid out in a sequence, as recorded in the token space."""

    kind: str
    pattern: tuple[int, ...]  # level index of each position inside one frame

    @classmethod
    def frame_major(cls, n_q: int) -> "LayoutSpec":
        return cls(kind="frame_major", pattern=tuple(range(int(n_q))))

    @classmethod
    def fsq(cls) -> "LayoutSpec":
        return cls(kind="fsq", pattern=(0,))

    @classmethod
    def multirate(cls, codes_per_frame: Sequence[int]) -> "LayoutSpec":
        """`codes_per_frame[k]`: how many codes level k has per frame of the coarsest level (1, 2, 4, ...)."""
        return cls(kind="multirate", pattern=tuple(k for k, n in enumerate(codes_per_frame) for _ in range(int(n))))

    @classmethod
    def grid2d(cls) -> "LayoutSpec":
        return cls(kind="grid2d", pattern=(0,))

    @classmethod
    def causal1d(cls) -> "LayoutSpec":
        return cls(kind="causal1d", pattern=(0,))

    @property
    def levels(self) -> int:
        return max(self.pattern) + 1 if self.pattern else 0

    @property
    def codes_per_frame(self) -> tuple[int, ...]:
        return tuple(self.pattern.count(k) for k in range(self.levels))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pattern": list(self.pattern)}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "layout") -> "LayoutSpec":
        _require_keys(data, ("kind", "pattern"), where)
        extra = sorted(set(data) - {"kind", "pattern"})
        if extra:
            raise TokenSpaceError(f"{where}: unknown key(s) {extra}")
        if not isinstance(data["pattern"], list):
            raise TokenSpaceError(f"{where}: pattern must be a list of level indices")
        return cls(kind=str(data["kind"]), pattern=tuple(_int(v, where) for v in data["pattern"]))

    def validate(self, *, modality: str, n_levels: int, where: str) -> None:
        """The pattern fits its kind and uses every level of the modality, each in one contiguous run."""
        if self.kind not in LAYOUT_KINDS:
            raise TokenSpaceError(f"{where}: layout kind {self.kind!r} is not one of {sorted(LAYOUT_KINDS)}; "
                                  "upgrade uti to read it")
        if LAYOUT_KINDS[self.kind][0] != modality:
            raise TokenSpaceError(f"{where}: layout {self.kind!r} is for {LAYOUT_KINDS[self.kind][0]}, not {modality}")
        p = self.pattern
        if not p or any(v < 0 for v in p) or list(p) != sorted(p) or set(p) != set(range(n_levels)):
            raise TokenSpaceError(f"{where}: pattern {list(p)} must list the level indices 0..{n_levels - 1}, "
                                  "each at least once, in non-decreasing order")
        expected = {"frame_major": tuple(range(n_levels)), "fsq": (0,), "grid2d": (0,), "causal1d": (0,)}.get(self.kind)
        if expected is not None and p != expected:
            raise TokenSpaceError(f"{where}: a {self.kind} layout over {n_levels} level(s) has pattern "
                                  f"{list(expected)}, got {list(p)}")
        if self.kind == "multirate":
            counts = self.codes_per_frame
            if counts[0] != 1 or any(b % a for a, b in zip(counts, counts[1:])):
                raise TokenSpaceError(f"{where}: a multirate layout has one code of level 0 per frame and each "
                                      f"level a multiple of the previous one's codes; got {list(counts)}")


def expected_audio_frames(params: Mapping[str, Any], n_samples: int) -> int:
    """Frames an audio codec gives a clip of n_samples, from what its token-space descriptor records, so
    a reader needs no codec to check meta: `framing` {"pad_to": P, "extra": E} (the clip plus E samples
    is padded to a multiple of P samples, P / hop_length frames each: Mimi and DAC P = hop_length,
    X-codec2 E = 1, SNAC P = hop_length * the coarsest stride's padding unit), else EnCodec's segments
    (`segment_length`/`segment_stride`), else ceil(n_samples / hop_length)."""
    n, hop = int(n_samples), int(params["hop_length"])
    framing = params.get("framing")
    if framing:
        unit, extra = int(framing["pad_to"]), int(framing.get("extra", 0))
        return -(-(n + extra) // unit) * (unit // hop)
    seg, stride = params.get("segment_length"), params.get("segment_stride")
    if seg:
        return sum(-(-min(int(seg), n - off) // hop) for off in range(0, n, int(stride)))
    return -(-n // hop)


def default_layout(modality: str, params: Mapping[str, Any]) -> LayoutSpec:
    """The layout versions 1 and 2 implied: frame-major audio over n_q levels, a row-major image grid."""
    return LayoutSpec.frame_major(int(params.get("n_q", 0))) if modality == "audio" else LayoutSpec.grid2d()


@dataclass(frozen=True, kw_only=True)
class MediaLayout:
    """A layout bound to the token space's ranges: for any position of a media sequence (boundary
    tokens excluded) the range its ID must lie in. Decode, verify, training's sequence builder and
    constrained generation all read it; see `TokenSpace.layout`.

    A media sequence is `n_frames` frames of `tokens_per_frame` positions: audio frames (for a
    multirate codec, frames of its coarsest level), or image grid cells (`n_frames = grid_h * grid_w`)."""

    modality: str
    kind: str
    pattern: tuple[int, ...]
    level_ranges: tuple[Range, ...]  # indexed by level
    grid: tuple[int, int] | None = None  # image codecs: (grid_h, grid_w)
    n_tokens: int | None = None  # causal1d image codecs: codes per image

    @property
    def tokens_per_frame(self) -> int:
        return len(self.pattern)

    @property
    def codes_per_frame(self) -> tuple[int, ...]:
        """How many positions of a frame each level has (frame-major: all 1; SNAC 24 kHz: 1, 2, 4)."""
        return tuple(self.pattern.count(k) for k in range(len(self.level_ranges)))

    def level_of_position(self, i: int) -> int:
        if i < 0:
            raise IndexError(f"{self.modality} position {i} is negative")
        return self.pattern[i % len(self.pattern)]

    def range_of_position(self, i: int, n_frames: int | None = None) -> Range:
        """The range position i's ID must lie in; with n_frames, positions past the end are an error."""
        if n_frames is not None and i >= n_frames * self.tokens_per_frame:
            raise IndexError(f"{self.modality} position {i} is past the end of {n_frames} frames "
                             f"({n_frames * self.tokens_per_frame} tokens)")
        return self.level_ranges[self.level_of_position(i)]

    def is_frame_start(self, i: int) -> bool:
        """Whether position i begins a frame: a media sequence may only end (or be cut) before such a position."""
        return i % self.tokens_per_frame == 0

    def n_frames(self, meta: Mapping[str, Any]) -> int:
        """Frames promised by a sample's meta: audio `n_frames`, image `grid` cells, causal1d `n_tokens`."""
        if self.kind == "causal1d":
            n = meta.get("n_tokens", self.n_tokens)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise TokenSpaceError(f"image meta n_tokens={meta.get('n_tokens')!r} is not a positive integer")
            return n
        if self.modality == "image":
            grid = list(meta.get("grid") or self.grid or ())
            if len(grid) != 2 or not all(isinstance(v, int) and v > 0 for v in grid):
                raise TokenSpaceError(f"image meta grid {meta.get('grid')!r} is not two positive integers")
            return grid[0] * grid[1]
        n = meta.get("n_frames")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TokenSpaceError(f"audio meta n_frames={n!r} is not a positive integer")
        return n

    def expected_len(self, meta: Mapping[str, Any]) -> int:
        """How many media tokens a sample with this meta has."""
        return self.n_frames(meta) * self.tokens_per_frame

    def shape_meta(self) -> dict[str, Any]:
        """The shape fields an image sample's meta carries for this layout: `grid` [h, w] for a grid,
        `n_tokens` for a causal1d codec (SEED: 32), whose codes have no 2D arrangement."""
        if self.modality != "image":
            raise TokenSpaceError(f"shape_meta is for image layouts, not {self.modality}")
        if self.kind == "causal1d":
            return {"n_tokens": self.n_tokens}
        return {"grid": list(self.grid) if self.grid else None}

    def frames_in(self, n_tokens: int) -> int | None:
        """Whole frames in n_tokens tokens, or None when n_tokens is not a whole number of frames."""
        return n_tokens // self.tokens_per_frame if n_tokens % self.tokens_per_frame == 0 else None

    def bounds(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Per position of an n_frames sequence: the first ID and one past the last ID it may hold."""
        starts = np.array([self.level_ranges[k].start for k in self.pattern], dtype=np.int64)
        ends = np.array([self.level_ranges[k].end for k in self.pattern], dtype=np.int64)
        return np.tile(starts, n_frames), np.tile(ends, n_frames)

    def first_violation(self, ids: np.ndarray) -> int | None:
        """The first position whose ID is outside its range (None: all fine). len(ids) must be whole frames."""
        n_frames = self.frames_in(len(ids))
        if n_frames is None:
            raise TokenSpaceError(f"{len(ids)} {self.modality} tokens are not whole frames of {self.tokens_per_frame}")
        lo, hi = self.bounds(n_frames)
        ids = np.asarray(ids, dtype=np.int64)
        bad = (ids < lo) | (ids >= hi)
        return int(np.argmax(bad)) if bad.any() else None

    def to_ids(self, codes: np.ndarray) -> np.ndarray:
        """Local codes (n_frames, tokens_per_frame), column j of level pattern[j] -> global IDs (uint32)."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.tokens_per_frame:
            raise ValueError(f"{self.modality} codes must be (n_frames, {self.tokens_per_frame}), got {codes.shape}")
        starts = np.array([self.level_ranges[k].start for k in self.pattern], dtype=np.int64)
        sizes = np.array([self.level_ranges[k].size for k in self.pattern], dtype=np.int64)
        if ((codes < 0) | (codes >= sizes[None, :])).any():
            raise ValueError(f"{self.modality} codes outside their levels' codebooks {sorted(set(sizes.tolist()))}")
        return (codes + starts[None, :]).reshape(-1).astype(np.uint32)

    def level_codes(self, ids: np.ndarray) -> list[np.ndarray]:
        """Global IDs (checked, whole frames) -> each level's local codes in time order (level k of a
        multirate layout has codes_per_frame[k] codes per frame): for per-level codebook statistics."""
        codes = self.to_codes(ids)
        return [codes[:, [j for j, k in enumerate(self.pattern) if k == level]].reshape(-1)
                for level in range(len(self.level_ranges))]

    def to_codes(self, ids: np.ndarray) -> np.ndarray:
        """Global IDs (already checked, whole frames) -> local codes (n_frames, tokens_per_frame)."""
        n_frames = self.frames_in(len(ids))
        if n_frames is None:
            raise TokenSpaceError(f"{len(ids)} {self.modality} tokens are not whole frames of {self.tokens_per_frame}")
        starts = np.array([self.level_ranges[k].start for k in self.pattern], dtype=np.int64)
        return np.asarray(ids, dtype=np.int64).reshape(n_frames, self.tokens_per_frame) - starts[None, :]


def _require_keys(data: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise TokenSpaceError(f"{what}: expected an object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise TokenSpaceError(f"{what}: missing key(s) {', '.join(missing)}")


@dataclass(frozen=True, kw_only=True)
class TokenSpace:
    ranges: tuple[Range, ...]
    specials: Mapping[str, int]
    codecs: Mapping[str, CodecDescriptor]
    version: int = VERSION  # what the descriptors record (see VERSION); loaded files keep their own

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        text: CodecDescriptor | None,
        image: CodecDescriptor | None,
        audio: CodecDescriptor | None,
        num_reserved: int = 50,
        version: int = VERSION,
    ) -> "TokenSpace":
        """Lay out ranges in the fixed order special, text, image, audio.l0..l{n_q-1}. From version 3 a
        media codec's descriptor carries its layout (frame-major audio / a row-major grid when it names
        none); before, only those two layouts exist and none is recorded."""
        image, audio = (recorded_descriptor(d, version) for d in (image, audio))
        names = list(SPECIAL_TOKENS) + [f"<reserved_{i}>" for i in range(num_reserved)]
        specials = {name: i for i, name in enumerate(names)}
        ranges = [Range(name="special", start=0, size=len(names))]
        codecs: dict[str, CodecDescriptor] = {}
        cursor = len(names)
        if text is not None:
            ranges.append(Range(name="text", start=cursor, size=int(text.params["vocab_size"])))
            cursor = ranges[-1].end
            codecs["text"] = text
        if image is not None:
            ranges.append(Range(name="image", start=cursor, size=int(image.params["codebook_size"])))
            cursor = ranges[-1].end
            codecs["image"] = image
        if audio is not None:
            for level in range(int(audio.params["n_q"])):
                ranges.append(Range(name=f"audio.l{level}", start=cursor, size=int(audio.params["codebook_size"])))
                cursor = ranges[-1].end
            codecs["audio"] = audio
        space = cls(ranges=tuple(ranges), specials=specials, codecs=codecs, version=version)
        space.validate()
        return space

    # ---- views ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(r.end for r in self.ranges)

    def range(self, name: str) -> Range:
        for r in self.ranges:
            if r.name == name:
                return r
        modality = name.split(".")[0]
        if modality in ("text", "image", "audio") and modality not in self.codecs:
            raise TokenSpaceError(missing_modality_message(self, modality))
        raise TokenSpaceError(f"token space {self.short_id} has no range {name!r}; ranges: {self.range_names}")

    def has_modality(self, modality: str) -> bool:
        return modality in self.codecs

    def has_range(self, name: str) -> bool:
        return any(r.name == name for r in self.ranges)

    @property
    def range_names(self) -> list[str]:
        return [r.name for r in self.ranges]

    @property
    def audio_levels(self) -> list[Range]:
        return [r for r in self.ranges if r.name.startswith("audio.l")]

    def layout(self, modality: str) -> MediaLayout:
        """Which range each position of a `modality` ("audio" or "image") media sequence belongs to."""
        if modality not in ("audio", "image"):
            raise TokenSpaceError(f"{modality!r} has no media layout (only audio and image do)")
        if modality not in self.codecs:
            raise TokenSpaceError(missing_modality_message(self, modality))
        codec = self.codecs[modality]
        spec = codec.layout or default_layout(modality, codec.params)
        levels = tuple(self.audio_levels) if modality == "audio" else (self.range("image"),)
        grid = tuple(int(v) for v in codec.params["grid"]) if modality == "image" and codec.params.get("grid") else None
        n_tokens = int(codec.params["n_tokens"]) if modality == "image" and codec.params.get("n_tokens") else None
        return MediaLayout(modality=modality, kind=spec.kind, pattern=spec.pattern, level_ranges=levels, grid=grid,
                           n_tokens=n_tokens)

    def special(self, name: str) -> int:
        try:
            return self.specials[name]
        except KeyError:
            raise TokenSpaceError(f"token space {self.short_id} has no special token {name!r}") from None

    def modality_of(self, token_id: int) -> str:
        for r in self.ranges:
            if token_id in r:
                return r.name.split(".")[0]
        raise TokenSpaceError(f"token ID {token_id} is outside the token space (vocab size {self.vocab_size})")

    # ---- serialization --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "version": self.version,
            "vocab_size": self.vocab_size,
            "ranges": [r.to_dict() for r in self.ranges],
            "specials": dict(self.specials),
            "codecs": {m: c.to_dict() for m, c in self.codecs.items()},
        }
        if self.version < LAYOUT_VERSION:
            out["level_order"] = LEVEL_ORDER
        return out

    def canonical_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        return sha256_hex(self.canonical_json())

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "token space") -> "TokenSpace":
        _require_keys(data, ("format", "version", "vocab_size", "ranges", "specials", "codecs"), where)
        if data["format"] != FORMAT:
            raise TokenSpaceError(f"{where}: format is {data['format']!r}, expected {FORMAT!r}")
        if type(data["version"]) is not int or data["version"] not in READABLE_VERSIONS:
            raise TokenSpaceError(
                f"{where}: version {data['version']!r} is not supported by this reader (reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade uti to read it"
            )
        if data["version"] < LAYOUT_VERSION:
            _require_keys(data, ("level_order",), where)
            if data["level_order"] != LEVEL_ORDER:
                raise TokenSpaceError(f"{where}: level_order {data['level_order']!r}, expected {LEVEL_ORDER!r}")
        elif "level_order" in data:
            raise TokenSpaceError(f"{where}: version {data['version']} records a layout per codec, not a global "
                                  "level_order; rebuild it with `uti tokenspace build`")
        try:
            ranges = []
            for r in data["ranges"]:
                _require_keys(r, ("name", "start", "size"), f"{where}: range")
                ranges.append(Range(name=str(r["name"]), start=_int(r["start"], where), size=_int(r["size"], where)))
            if not isinstance(data["specials"], Mapping) or not isinstance(data["codecs"], Mapping):
                raise TokenSpaceError(f"{where}: specials and codecs must be objects")
            specials = {str(k): _int(v, where) for k, v in data["specials"].items()}
            codecs = {str(m): CodecDescriptor.from_dict(c) for m, c in data["codecs"].items()}
            space = cls(ranges=tuple(ranges), specials=specials, codecs=codecs, version=data["version"])
            space.validate(where=where)
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            if isinstance(exc, TokenSpaceError):
                raise
            raise TokenSpaceError(f"{where}: malformed ({type(exc).__name__}: {exc}); rebuild it with "
                                  "`uti tokenspace build`") from None
        if data["vocab_size"] != space.vocab_size:
            raise TokenSpaceError(f"{where}: vocab_size {data['vocab_size']} != max ID + 1 = {space.vocab_size}")
        return space

    @classmethod
    def from_json_bytes(cls, raw: bytes, *, where: str = "token space") -> "TokenSpace":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd integers, absurd nesting
            raise TokenSpaceError(f"{where}: not valid UTF-8 JSON: {type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict):
            raise TokenSpaceError(f"{where}: expected a JSON object, got {type(data).__name__}")
        space = cls.from_dict(data, where=where)
        if space.canonical_json() != raw:
            raise TokenSpaceError(
                f"{where}: not in canonical form (sorted keys, no whitespace); it was edited by hand or by "
                "another tool. Rebuild it with `uti tokenspace build`"
            )
        return space

    def files(self) -> dict[str, bytes]:
        """token_space.json and token_space.sha256 (sha256sum format, so `sha256sum -c` checks the pair):
        file name -> bytes, in the order to write them. Every writer of the pair (a local folder, an
        object store) writes these bytes."""
        raw = self.canonical_json()
        return {JSON_NAME: raw, SHA_NAME: f"{sha256_hex(raw)}  {JSON_NAME}\n".encode()}

    @classmethod
    def from_files(cls, raw: bytes, sha: bytes | None, *, where: str, sha_where: str, fix: str) -> "TokenSpace":
        """The token space of token_space.json's bytes `raw`, checked against its .sha256's bytes `sha`
        (None: missing): canonical JSON, and the SHA-256 the pair records equal to its hash. `where` and
        `sha_where` name the two files; `fix` ends each refusal with how to get a matching pair back."""
        space = cls.from_json_bytes(raw, where=where)
        if sha is None:
            raise TokenSpaceError(f"{sha_where}: missing; {JSON_NAME} and {SHA_NAME} travel together: {fix}")
        recorded = recorded_sha(sha)
        if recorded != space.id:
            raise TokenSpaceError(f"{sha_where}: records {recorded[:16]!r} but {where} hashes to {space.id[:16]}; "
                                  f"one of the two files was changed: {fix}")
        return space

    def write(self, directory: str | os.PathLike) -> Path:
        """Write token_space.json and token_space.sha256 atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            atomic_write(directory / name, data)
        return directory / JSON_NAME

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenSpace":
        """Load from a directory holding both files (or the JSON path); the SHA file must match exactly."""
        path = Path(path)
        json_path = path / JSON_NAME if path.is_dir() else path
        sha_path = json_path.with_name(SHA_NAME)
        if not json_path.is_file():
            raise TokenSpaceError(f"{json_path}: no token space here; write one with `uti tokenspace build`")
        sha = sha_path.read_bytes() if sha_path.is_file() else None
        return cls.from_files(json_path.read_bytes(), sha, where=str(json_path), sha_where=str(sha_path),
                              fix="restore both from the same job")

    # ---- checks ---------------------------------------------------------------------------------
    def validate(self, *, where: str = "token space") -> None:
        """Contiguous from 0, no overlap or gap, specials inside `special`, sizes consistent with codecs."""
        if not self.ranges:
            raise TokenSpaceError(f"{where}: no ranges")
        names = [r.name for r in self.ranges]
        if len(set(names)) != len(names):
            raise TokenSpaceError(f"{where}: duplicate range names in {names}")
        if names[0] != "special":
            raise TokenSpaceError(f"{where}: the first range must be 'special', got {names[0]!r}")
        cursor = 0
        for r in self.ranges:
            if r.size <= 0:
                raise TokenSpaceError(f"{where}: range {r.name!r} has size {r.size}; sizes must be positive")
            if r.start < cursor:
                raise TokenSpaceError(f"{where}: range {r.name!r} starts at {r.start}, overlapping IDs below {cursor}")
            if r.start > cursor:
                raise TokenSpaceError(f"{where}: gap of IDs {cursor}..{r.start - 1} before range {r.name!r}")
            cursor = r.end
        special = self.ranges[0]
        seen: dict[int, str] = {}
        for name, token_id in self.specials.items():
            if token_id not in special:
                raise TokenSpaceError(
                    f"{where}: special token {name!r} has ID {token_id}, outside the special range "
                    f"[{special.start}, {special.end})"
                )
            if token_id in seen:
                raise TokenSpaceError(f"{where}: special tokens {seen[token_id]!r} and {name!r} share ID {token_id}")
            seen[token_id] = name
        missing = [s for s in SPECIAL_TOKENS if s not in self.specials]
        if missing:
            raise TokenSpaceError(f"{where}: required special tokens missing: {missing}")
        self._validate_codec_sizes(where)

    def _validate_codec_sizes(self, where: str) -> None:
        for modality, codec in self.codecs.items():
            if codec.modality != modality:
                raise TokenSpaceError(f"{where}: codec under {modality!r} says modality {codec.modality!r}")
        expected: dict[str, int] = {}
        if "text" in self.codecs:
            expected["text"] = int(self.codecs["text"].params.get("vocab_size", -1))
        if "image" in self.codecs:
            expected["image"] = int(self.codecs["image"].params.get("codebook_size", -1))
        if "audio" in self.codecs:
            params = self.codecs["audio"].params
            n_q = int(params.get("n_q", -1))
            levels = self.audio_levels
            if len(levels) != n_q:
                raise TokenSpaceError(f"{where}: audio codec has n_q={n_q} but there are {len(levels)} audio level ranges")
            for k in range(n_q):
                expected[f"audio.l{k}"] = int(params.get("codebook_size", -1))
        present = {r.name for r in self.ranges if r.name != "special"}
        if present != set(expected):
            raise TokenSpaceError(
                f"{where}: ranges {sorted(present)} do not match the codecs' ranges {sorted(expected)}"
            )
        for name, size in expected.items():
            if self.range(name).size != size:
                raise TokenSpaceError(f"{where}: range {name!r} has size {self.range(name).size}, its codec says {size}")
        for modality, codec in self.codecs.items():
            self._validate_layout(modality, codec, where)

    def _validate_layout(self, modality: str, codec: CodecDescriptor, where: str) -> None:
        """Version 3: every media codec records a layout that fits its levels; before: none is recorded."""
        at = f"{where}: codecs.{modality}.layout"
        if modality == "text" or self.version < LAYOUT_VERSION:
            if codec.layout is not None:
                raise TokenSpaceError(f"{at}: not recorded for {'text' if modality == 'text' else f'version {self.version}'}")
            return
        if codec.layout is None:
            raise TokenSpaceError(f"{at}: missing; version {self.version} records every media codec's layout")
        n_levels = int(codec.params.get("n_q", -1)) if modality == "audio" else 1
        codec.layout.validate(modality=modality, n_levels=n_levels, where=at)
        recorded = codec.params.get("codes_per_frame")
        if recorded is not None and list(codec.layout.codes_per_frame) != list(recorded):
            raise TokenSpaceError(f"{at}: a {codec.layout.kind} layout with {list(codec.layout.codes_per_frame)} codes "
                                  f"per level and frame, but the codec records codes_per_frame {list(recorded)}")
        n_tokens = codec.params.get("n_tokens")
        if codec.layout.kind == "causal1d" and (isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1):
            raise TokenSpaceError(f"{at}: a causal1d layout needs the codec to record n_tokens (codes per image), "
                                  f"got {n_tokens!r}")

    def check_runtime(self, reported: Mapping[str, Mapping[str, Any]]) -> None:
        """Compare the recorded codec params with what the loaded models report. Any difference raises."""
        problems = []
        for modality, sizes in reported.items():
            if modality not in self.codecs:
                problems.append(f"{modality}: loaded but not in the token space")
                continue
            recorded = self.codecs[modality].params
            for key, value in sizes.items():
                if key not in recorded:
                    problems.append(f"{modality}.{key}: not recorded in the token space")
                elif _normalize(recorded[key]) != _normalize(value):
                    problems.append(f"{modality}.{key}: token space records {recorded[key]!r}, loaded model reports {value!r}")
        if problems:
            raise RuntimeSizeMismatch(
                f"token space {self.short_id} does not match the loaded codecs: " + "; ".join(problems)
                + ". Rebuild the token space from this config (`uti tokenspace build`) or load the matching weights"
            )


def recorded_descriptor(desc: CodecDescriptor | None, version: int) -> CodecDescriptor | None:
    """`desc` as a token space of `version` records it: from version 3 with its layout (the implied
    one when it names none), before without (and refused when its layout is not the implied one)."""
    if desc is None:
        return None
    default = default_layout(desc.modality, desc.params)
    if version >= LAYOUT_VERSION:
        return desc if desc.layout is not None else dataclasses.replace(desc, layout=default)
    if desc.layout is not None and desc.layout != default:
        raise TokenSpaceError(f"{desc.modality} codec {desc.kind!r} lays out its codes as {desc.layout.kind!r}, which "
                              f"token-space version {version} cannot record (version {LAYOUT_VERSION} and later can)")
    return dataclasses.replace(desc, layout=None) if desc.layout is not None else desc


def missing_modality_message(space: TokenSpace, modality: str) -> str:
    """The one sentence every consumer prints when a sample of a modality without a range arrives."""
    return (f"token space {space.short_id} has no {modality} range (its codec config has no {modality}: codec); "
            f"configure {modality}: in uti.yaml (e.g. {EXAMPLE_CONFIG[modality]}) and rebuild the token space, "
            f"or leave the {modality} samples out")


EXAMPLE_CONFIG = {"text": "text: {kind: byte}", "image": "image: {kind: vqgan}", "audio": "audio: {kind: encodec}"}


def _normalize(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenSpaceError(f"{where}: expected an integer, got {value!r}")
    return value


def write_token_space(space: TokenSpace, directory: str | os.PathLike, *, force: bool = False) -> str:
    """Write `space` into `directory` unless a different token space is there (a tokenized dataset's,
    a run's): that one is replaced only with force=True. Returns what happened: "wrote", "unchanged"
    (the same token space was already there) or "replaced"."""
    directory = Path(directory)
    json_path = directory / JSON_NAME
    if not json_path.is_file():
        space.write(directory)
        return "wrote"
    raw = json_path.read_bytes()
    if raw == space.canonical_json():
        sha_path = directory / SHA_NAME
        if not sha_path.is_file() or recorded_sha(sha_path.read_bytes()) != space.id:
            space.write(directory)  # the same token space; only its .sha256 companion was missing or stale
        return "unchanged"
    if not force:
        try:
            existing = TokenSpace.from_json_bytes(raw, where=str(json_path))
        except TokenSpaceError as exc:
            raise TokenSpaceError(
                f"{json_path} already exists and is not a readable token space ({exc}); refusing to overwrite it. "
                "Write to another --out, or pass --force to replace it"
            ) from None
        changes = diff(existing, space)
        listed = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise TokenSpaceMismatch(
            f"{json_path} holds token space {existing.id[:16]}, a different one than this config's {space.id[:16]} "
            f"(changed: {listed}); refusing to overwrite it. Write to another --out, or pass --force to replace "
            "it (the shards or checkpoints made with the old one then no longer match it)",
            expected_id=existing.id, found_id=space.id, changes=changes,
        )
    space.write(directory)
    return "replaced"


# ---- comparing token spaces -----------------------------------------------------------------------
def diff(a: TokenSpace | Mapping[str, Any], b: TokenSpace | Mapping[str, Any]) -> list[str]:
    """Human-readable list of what changed from `a` to `b`, as dotted paths."""
    da = a.to_dict() if isinstance(a, TokenSpace) else dict(a)
    db = b.to_dict() if isinstance(b, TokenSpace) else dict(b)
    out: list[str] = []
    _diff(da, db, "", out)
    return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{sub}: added ({_short(b[key])})")
            elif key not in b:
                out.append(f"{sub}: removed (was {_short(a[key])})")
            else:
                _diff(a[key], b[key], sub, out)
    elif isinstance(a, list) and isinstance(b, list) and a and all(isinstance(x, Mapping) and "name" in x for x in a + b):
        _diff({x["name"]: x for x in a}, {x["name"]: x for x in b}, path, out)
    elif a != b:
        out.append(f"{path}: {_short(a)} -> {_short(b)}")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def require_same(
    expected: TokenSpace | str,
    found: TokenSpace | str,
    *,
    override: bool = False,
    what: str = "input",
    fix: str | None = None,
) -> dict | None:
    """Raise TokenSpaceMismatch unless both token spaces are identical.

    With override=True a mismatch is logged and returned as a record (to store next to the output),
    never silently ignored. Returns None when the two are identical. `fix` is the advice that ends the
    message: a caller whose command has an override flag names it there (no flag is named by default).
    """
    eid = expected.id if isinstance(expected, TokenSpace) else str(expected)
    fid = found.id if isinstance(found, TokenSpace) else str(found)
    if eid == fid:
        return None
    changes = diff(expected, found) if isinstance(expected, TokenSpace) and isinstance(found, TokenSpace) else []
    detail = ("; changed: " + "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")) if changes else ""
    if override:
        log.warning("token space mismatch for %s overridden: expected %s, found %s%s", what, eid[:12], fid[:12], detail)
        return {"overridden": True, "what": what, "expected": eid, "found": fid, "changes": changes}
    raise TokenSpaceMismatch(
        f"token space mismatch for {what}: expected {eid[:16]}, found {fid[:16]}{detail}. "
        + (fix or "Tokens from different token spaces must never be mixed: re-tokenize with the same config and "
                  "weights"),
        expected_id=eid, found_id=fid, changes=changes,
    )
