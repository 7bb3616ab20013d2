"""The per-shard scan: checks 1-4 and 6 on one shard, plus the statistics of checks 9-10.

The tar is parsed by sharding.parser, the parser of `sharding.reader.read_shard` too. The reader
raises at the first problem (right for training); the scan passes a handler that records a finding,
and keeps going after a bad sample so that one run reports every damaged sample with its check. It
returns a small summary (counts, fixed-size histograms, a SampleVerdict per sample) instead of tokens,
and stops only when the tar itself can no longer be parsed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharding.format import header_policy, index_modalities, is_hex64, sample_key, url_to_fs
from sharding.parser import ShardProblem, TarBroken, header_member, iter_members, iter_samples, parse_header, parse_ids
from sharding.tario import TrackingReader
from uti.errors import TokenSpaceError
from uti.modalities import MEDIA_MODALITIES, MODALITIES
from uti.token_space import TokenSpace, expected_audio_frames
from verify.dataset import ShardTask
from verify.findings import Check, FindingLog
from verify.stats import LengthStats

# A training sequence adds a task tag / <bos>, two boundary pairs and <eos> around media + one caption;
# the length check estimates sequences as media + longest caption + this many specials.
SEQUENCE_OVERHEAD = 6
# The sample schema has one definition, sharding.format.SampleMeta: what every sample's meta must carry,
# and the codec fields a media sample's meta carries for decode.
from sharding.format import MEDIA_META, META_COMMON as COMMON_META  # noqa: E402
# The checks whose failure makes a sample (or shard) unfit for decode spot checks and the loader test:
# those would only fail again for the same root cause.
STRUCTURAL = (Check.TOKEN_SPACE, Check.TOKEN_RANGES, Check.SHAPES, Check.SHARD_INTEGRITY, Check.SPLIT_INTEGRITY)


@dataclass(frozen=True)
class SampleVerdict:
    """What the scan concluded about one sample: small strings for reconciliation and leakage, and whether it
    is clean (no structural finding), i.e. fit for the decode and retokenize spot checks."""

    id: str
    key: str
    modality: str  # "" when the meta's modality is unusable
    source_sha256: str | None  # None for text rows and when the meta's is not a SHA-256
    clean: bool


_SAME = object()  # flag(): "the sample's own canonical ID"


@dataclass(eq=False)
class _SampleScan:
    """One sample while its checks run: what was parsed of it, and whether a structural check failed."""

    key: str
    position: int  # in the tar
    meta: dict = field(default_factory=dict)
    sid: str | None = None  # the canonical ID, when the meta has a usable one
    tokens: np.ndarray | None = None
    text: np.ndarray | None = None
    modality: str | None = None  # None when not one of MODALITIES
    source_sha256: str | None = None
    clean: bool = True


@dataclass
class ShardSummary:
    """What a scan task returns: O(samples) small strings, never token arrays."""

    split: str
    name: str
    index_ids: list[str]  # the canonical IDs the shard's index claims
    index_error_ids: list[str]
    samples: list["SampleVerdict"]  # every sample with a canonical ID, in tar order
    findings: FindingLog
    clean: bool  # no structural failure anywhere in the shard
    tar_bytes: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    codebooks: dict[str, np.ndarray] = field(default_factory=dict)
    lengths: dict[str, LengthStats] = field(default_factory=dict)
    header_version: int | None = None  # None when the header was unusable
    # The header's encode_policy ({modality: policy dict}, sharding.format.header_policy); None: version 1.
    # Carried here so the retokenize picks know their shard's policy without reading the tar again.
    encode_policy: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.split}/{self.name}"


class _Expect:
    """What the token space says samples must look like, computed once per task."""

    def __init__(self, space: TokenSpace):
        self.space = space
        self.id = space.id
        self.text = space.range("text") if space.has_range("text") else None
        self.image = space.range("image") if space.has_range("image") else None
        self.levels = space.audio_levels
        if any(a.end != b.start for a, b in zip(self.levels, self.levels[1:])):
            raise ValueError("audio level ranges must be consecutive (TokenSpace.validate guarantees it)")
        self.n_q = len(self.levels)
        # Which level each position of an audio frame holds (frame-major: 0..n_q-1; SNAC: 0,1,1,2,2,2,2):
        # the token space's layout, so verify never assumes one code per level per frame.
        self.audio_layout = space.layout("audio") if "audio" in space.codecs else None
        pattern = list(self.audio_layout.pattern) if self.audio_layout is not None else []
        self.per_frame = len(pattern)
        self.slot_starts_u32 = np.array([self.levels[k].start for k in pattern], dtype=np.uint32)
        self.slot_sizes_u32 = np.array([self.levels[k].size for k in pattern], dtype=np.uint32)
        a = space.codecs["audio"].params if "audio" in space.codecs else {}
        self.audio = dict(a)
        self.hop = int(a["hop_length"]) if a.get("hop_length") else (
            int(round(a["sample_rate"] / a["frame_rate"])) if a.get("sample_rate") and a.get("frame_rate") else 0)
        i = space.codecs["image"].params if "image" in space.codecs else {}
        self.grid = list(i.get("grid") or [])
        self.proc_size = list(i.get("proc_size") or [])
        # The shape fields an image's meta carries for the token space's image layout: {"grid": [h, w]}
        # for a grid (VQGAN, Emu3, Janus), {"n_tokens": n} for a causal1d codec (SEED).
        self.image_layout = space.layout("image") if "image" in space.codecs else None
        self.image_shape = self.image_layout.shape_meta() if self.image_layout is not None else {"grid": self.grid}

    def media_meta(self, modality: str) -> tuple[str, ...]:
        """The meta keys a sample of `modality` must have."""
        if modality == "image":
            return ("proc_size", *self.image_shape)
        return MEDIA_META[modality]

    def segments(self, n_samples: int) -> list[int]:
        seg, stride = self.audio.get("segment_length"), self.audio.get("segment_stride")
        if not seg:
            return [n_samples]
        return [min(int(seg), n_samples - off) for off in range(0, n_samples, int(stride))]

    def expected_frames(self, n_samples: int) -> int:
        """The codec's frame rule as its descriptor records it (padding units, EnCodec's segments...)."""
        return expected_audio_frames({**self.audio, "hop_length": self.hop}, n_samples)

    def slot(self, p: int) -> str:
        """Where audio position p sits: frame and level, plus the position inside the frame when a
        frame holds more than one code per level."""
        f, j = divmod(p, self.per_frame)
        k = self.audio_layout.pattern[j]
        inside = "" if self.audio_layout.kind == "frame_major" else f", position {j} of {self.per_frame}"
        return f"frame {f}, level {k}{inside}"

    def range_name(self, token_id: int) -> str:
        for r in self.space.ranges:
            if token_id in r:
                return r.name
        return f"outside the vocab (size {self.space.vocab_size})"


# ---- one shard -------------------------------------------------------------------------------------
class _Scan:
    def __init__(self, task: ShardTask, expect: _Expect, *, max_seq_len: int | None, max_examples: int):
        self.task = task
        self.expect = expect
        self.label = task.label
        self.index = task.index or {}
        self.log = FindingLog(max_examples)
        self.max_seq_len = max_seq_len
        self.samples: list[SampleVerdict] = []
        self.seen_keys: set[str] = set()
        self.seen_ids: set[str] = set()
        self.read: list[tuple[str, str | None, int, int, Any]] = []  # (key, id, tokens, text, modality) in tar order
        self.image_book = np.zeros(expect.image.size if expect.image is not None else 0, dtype=np.int64)
        self.audio_book = np.zeros(expect.levels[-1].end - expect.levels[0].start if expect.levels else 0, dtype=np.int64)
        self.lengths: dict[str, LengthStats] = {}
        self.counts: dict[str, int] = {"samples": 0}
        self.header_id: str | None = None
        self.header_version: int | None = None
        self.encode_policy: dict[str, Any] | None = None

    def fail(self, check: str, detail: str, key: str | None = None, id: str | None = None) -> None:
        self.log.add(check, detail, shard=self.label, key=key, id=id)

    def _indexed(self, i: int) -> tuple[str | None, str | None]:
        keys, ids = self.index.get("keys") or [], self.index.get("ids") or []
        return (keys[i] if i < len(keys) else None, ids[i] if i < len(ids) else None)

    # -- header and index
    def header(self, data: bytes) -> bool:
        """The shared header parse (sharding.parser), recording its problems; then what only verify
        knows: the expected token space and where the shard sits. False when the header is unusable."""
        header = parse_header(data, self.label, self._record)
        if header is None:
            return False
        claimed = header["token_space_id"]
        if claimed != self.expect.id:
            self.fail(Check.TOKEN_SPACE, f"shard header carries token space {claimed[:16]}, expected {self.expect.id[:16]}; "
                                         "tokens of another codec/weights must never be mixed in")
        self.header_id = claimed
        self.header_version = header["version"]
        self.encode_policy = header_policy(header)
        if header["shard"] != self.task.name or header["split"] != self.task.split:
            self.fail(Check.SHARD_INTEGRITY,
                      f"header says {header['split']}/{header['shard']}, the file sits at {self.label}")
        return True

    def _record(self, problem: ShardProblem) -> None:
        """verify's error policy for the shared parser: a finding, then carry on."""
        self.fail(Check.TOKEN_SPACE if problem.kind == "token_space" else Check.SHARD_INTEGRITY, problem.problem)

    def index_checks(self) -> None:
        # A tar whose size differs from its index needs no finding of its own: the scan names the
        # damaged sample and the final size/SHA-256 comparison reports the difference.
        if self.task.problem and not self.task.problem.startswith("size_mismatch"):
            self.fail(Check.SHARD_INTEGRITY, self.task.problem)
        if self.index.get("token_space_id") != self.expect.id:
            self.fail(Check.TOKEN_SPACE,
                      f"shard index carries token space {str(self.index.get('token_space_id'))[:16]}, "
                                     f"expected {self.expect.id[:16]}")

    # -- one sample: parse, then each check one function; a structural finding marks the sample unclean
    def flag(self, v: "_SampleScan", check: str, detail: str, id: Any = _SAME) -> None:
        """A finding about sample `v`; a structural one makes it unfit for decode, retokenize and the loader."""
        self.fail(check, detail, v.key, v.sid if id is _SAME else id)
        if check in STRUCTURAL:
            v.clean = False

    def sample(self, key: str, tokens_b: bytes, text_b: bytes, meta_b: bytes) -> None:
        v = _SampleScan(key=key, position=len(self.read))
        self.parse_meta(v, meta_b)
        self.parse_arrays(v, tokens_b, text_b)
        self.check_identity(v)
        self.check_schema(v)
        self.check_token_space(v)
        self.check_split(v)
        ranges_ok = self.check_ranges(v)
        if v.modality is not None:
            self.shapes(v)
        if v.tokens is not None and ranges_ok and v.modality in MEDIA_MODALITIES:
            self.histograms(v.tokens, v.modality)
        if v.modality is not None and v.tokens is not None and v.text is not None:
            self.lengths_of(v)
            self.count(v)
        if v.sid is not None:
            self.samples.append(SampleVerdict(id=v.sid, key=key, modality=v.modality or "",
                                              source_sha256=v.source_sha256, clean=v.clean))

    def parse_meta(self, v: "_SampleScan", meta_b: bytes) -> None:
        indexed_id = self._indexed(v.position)[1]  # the meta's own ID is unknown: name the one the index lists
        try:
            meta = json.loads(meta_b.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # also over-long ints and absurd nesting
            meta = None
            self.flag(v, Check.SHARD_INTEGRITY, f"{v.key}.json is not valid JSON ({exc})", id=indexed_id)
        if not isinstance(meta, dict):
            if meta is not None:
                self.flag(v, Check.SHARD_INTEGRITY, f"{v.key}.json is not a JSON object", id=indexed_id)
            meta = {}
        v.meta = meta
        v.sid = meta.get("id") if isinstance(meta.get("id"), str) and meta.get("id") else None

    def parse_arrays(self, v: "_SampleScan", tokens_b: bytes, text_b: bytes) -> None:
        v.tokens, why_t = parse_ids(tokens_b)
        v.text, why_x = parse_ids(text_b)
        self.read.append((v.key, v.sid, -1 if v.tokens is None else int(v.tokens.size),
                          -1 if v.text is None else int(v.text.size), v.meta.get("modality")))
        self.counts["samples"] += 1
        if why_t:
            self.flag(v, Check.TOKEN_RANGES, f"{v.key}.tokens.npy: {why_t}")
        if why_x:
            self.flag(v, Check.TOKEN_RANGES, f"{v.key}.text.npy: {why_x}")

    def check_identity(self, v: "_SampleScan") -> None:
        """The key is sample_key(id), and neither appears twice in the shard."""
        key, sid = v.key, v.sid
        if sid is None:
            self.flag(v, Check.SHAPES, f"{key}.json has no canonical 'id'", id=self._indexed(v.position)[1])
        else:
            if sample_key(sid) != key:
                self.flag(v, Check.SHARD_INTEGRITY, f"key {key} is not sample_key({sid!r}) = {sample_key(sid)}")
            if sid in self.seen_ids:
                self.flag(v, Check.SHARD_INTEGRITY, f"sample id {sid!r} appears twice in the shard")
        if key in self.seen_keys:
            self.flag(v, Check.SHARD_INTEGRITY, f"duplicate sample key {key}")
        self.seen_keys.add(key)
        if sid is not None:
            self.seen_ids.add(sid)

    def check_schema(self, v: "_SampleScan") -> None:
        """The meta fields every sample carries (sharding.format.SampleMeta) and its modality's codec fields."""
        meta = v.meta
        missing = [k for k in COMMON_META if k not in meta]
        modality = meta.get("modality")
        if modality not in MODALITIES:
            self.flag(v, Check.SHAPES, f"meta modality {modality!r} is not one of {', '.join(MODALITIES)}")
            modality = None
        else:
            missing += [k for k in self.expect.media_meta(modality) if k not in meta]
        if missing:
            self.flag(v, Check.SHAPES, f"meta lacks {', '.join(missing)}")
        v.modality = modality

    def check_token_space(self, v: "_SampleScan") -> None:
        meta = v.meta
        if "token_space_id" in meta and meta["token_space_id"] != self.expect.id:
            self.flag(v, Check.TOKEN_SPACE, f"sample meta carries token space {str(meta['token_space_id'])[:16]}, "
                                            f"expected {self.expect.id[:16]}")
        elif "token_space_id" in meta and self.header_id not in (None, self.expect.id):
            self.flag(v, Check.TOKEN_SPACE, f"sample meta carries token space {self.expect.id[:16]} but its shard header "
                                            f"{self.header_id[:16]}: which codec made these tokens is unknown")

    def check_split(self, v: "_SampleScan") -> None:
        """The meta's split is its shard's, and a media sample names its source's SHA-256 (for leakage)."""
        meta = v.meta
        if "split" in meta and meta["split"] != self.task.split:
            self.flag(v, Check.SPLIT_INTEGRITY, f"sample meta says split {meta['split']!r}, its shard is in "
                                                f"{self.task.split!r}")
        source_sha = meta.get("source_sha256")
        if v.modality in MEDIA_MODALITIES and not is_hex64(source_sha):
            self.flag(v, Check.SPLIT_INTEGRITY, f"meta source_sha256 {source_sha!r} is not a SHA-256; source leakage "
                                                "cannot be checked")
            source_sha = None
        v.source_sha256 = source_sha

    def check_ranges(self, v: "_SampleScan") -> bool:
        """Media IDs in their modality's range (audio: on their level), text IDs in the text range."""
        ok = True
        if v.tokens is not None and v.modality is not None:
            ok = self.ranges(v)
        text = v.text
        if text is not None and self.expect.text is not None and text.size:
            bad = (text < self.expect.text.start) | (text >= self.expect.text.end)
            if bad.any():
                p = int(np.argmax(bad))
                self.flag(v, Check.TOKEN_RANGES, f"text.npy position {p}: ID {int(text[p])} is not in text "
                          f"[{self.expect.text.start}, {self.expect.text.end}) (it is in {self.expect.range_name(int(text[p]))})")
                ok = False
        return ok

    def count(self, v: "_SampleScan") -> None:
        modality = v.modality
        self.counts[f"{modality}.samples"] = self.counts.get(f"{modality}.samples", 0) + 1
        self.counts[f"{modality}.tokens"] = self.counts.get(f"{modality}.tokens", 0) + int(v.tokens.size)
        self.counts["text.tokens"] = self.counts.get("text.tokens", 0) + int(v.text.size)

    def ranges(self, v: "_SampleScan") -> bool:
        tokens, modality = v.tokens, v.modality
        # uint32 arithmetic on purpose: (t - start) wraps below start, so one `>= size` tests both ends.
        if modality == "text":
            if tokens.size:
                self.flag(v, Check.SHAPES, f"text-only sample has {tokens.size} media tokens")
            return True
        if modality == "image":
            if self.expect.image is None:
                self.flag(v, Check.TOKEN_RANGES, "image sample, but the token space has no image range")
                return False
            bad = (tokens - np.uint32(self.expect.image.start)) >= np.uint32(self.expect.image.size)
            if bad.any():
                p = int(np.argmax(bad))
                self.flag(v, Check.TOKEN_RANGES, f"tokens position {p}: ID {int(tokens[p])} is not in image "
                                          f"[{self.expect.image.start}, {self.expect.image.end}) (it is in "
                                          f"{self.expect.range_name(int(tokens[p]))})")
                return False
            return True
        per = self.expect.per_frame
        if not self.expect.n_q or not per:
            self.flag(v, Check.TOKEN_RANGES, "audio sample, but the token space has no audio levels")
            return False
        # Position p holds the level the layout gives p % per (frame-major: p % n_q); checked even when
        # the length is not whole frames (check 3's job).
        if tokens.size % per == 0:
            bad = ((tokens.reshape(-1, per) - self.expect.slot_starts_u32) >= self.expect.slot_sizes_u32).reshape(-1)
        else:
            slot = np.arange(tokens.size) % per
            bad = (tokens - self.expect.slot_starts_u32[slot]) >= self.expect.slot_sizes_u32[slot]
        if bad.any():
            p = int(np.argmax(bad))
            r = self.expect.levels[self.expect.audio_layout.pattern[p % per]]
            self.flag(v, Check.TOKEN_RANGES, f"tokens position {p} ({self.expect.slot(p)}): ID {int(tokens[p])} is "
                                      f"not in {r.name} [{r.start}, {r.end}) (it is in "
                                      f"{self.expect.range_name(int(tokens[p]))}; the token space's audio layout is "
                                      f"{self.expect.audio_layout.kind} {list(self.expect.audio_layout.pattern)})")
            return False
        return True

    def shapes(self, v: "_SampleScan") -> None:
        """Check 3, shape sanity: the captions' token lengths, then the audio or image shape the meta
        claims against the token space's codec. One finding per sample lists every problem found."""
        n = None if v.tokens is None else int(v.tokens.size)
        problems = _caption_problems(v.meta, v.text)
        if v.modality == "audio":
            problems += _audio_problems(self.expect, v.meta, n)
        elif v.modality == "image":
            problems += _image_problems(self.expect, v.meta, n)
        if problems:
            self.flag(v, Check.SHAPES, "; ".join(problems))

    def histograms(self, tokens: np.ndarray, modality: str) -> None:
        """Called for in-range tokens only. The audio levels are consecutive ranges, so one bincount
        over all of them gives every level's histogram (level k is slice k of it)."""
        if modality == "image":
            self.image_book += np.bincount(tokens - np.uint32(self.expect.image.start), minlength=self.image_book.size)
        else:
            base = np.uint32(self.expect.levels[0].start)
            self.audio_book += np.bincount(tokens - base, minlength=self.audio_book.size)

    def codebooks(self) -> dict[str, np.ndarray]:
        out = {"image": self.image_book} if self.expect.image is not None else {}
        base = self.expect.levels[0].start if self.expect.levels else 0
        for r in self.expect.levels:
            out[r.name] = self.audio_book[r.start - base: r.end - base].copy()
        return out

    def lengths_of(self, v: "_SampleScan") -> None:
        meta, modality, tokens, text = v.meta, v.modality, v.tokens, v.text
        lens = meta.get("caption_token_lengths")
        longest = max(lens) if isinstance(lens, list) and lens and all(_is_count(n) for n in lens) else int(text.size)
        series = {f"{modality}.text": int(text.size), f"{modality}.sequence": int(tokens.size) + longest + SEQUENCE_OVERHEAD}
        if modality != "text":
            series[f"{modality}.media"] = int(tokens.size)
        for name, n in series.items():
            stats = self.lengths.setdefault(name, LengthStats())
            stats.add(n, self.max_seq_len if name.endswith(".sequence") else None)
        seq = series[f"{modality}.sequence"]
        if self.max_seq_len is not None and seq > self.max_seq_len:
            self.fail(Check.LENGTHS,
                      f"{modality} sequence of about {seq} tokens (media {tokens.size} + longest caption "
                                 f"{longest} + {SEQUENCE_OVERHEAD} specials) exceeds --max-seq-len {self.max_seq_len}",
                      v.key, meta.get("id"))

    # -- after the last member
    def against_index(self, src: TrackingReader, broken: str | None) -> None:
        n_index = self.index.get("num_samples", 0)
        keys, ids = self.index.get("keys") or [], self.index.get("ids") or []
        tcs, xcs = self.index.get("token_counts") or [], self.index.get("text_token_counts") or []
        modalities = index_modalities(self.index) if self.index else None
        if not isinstance(modalities, list) or len(modalities) != n_index:
            modalities = None  # an index without (valid) modalities: nothing to compare
        for i, (key, sid, nt, nx, modality) in enumerate(self.read):
            if i >= n_index:
                self.fail(Check.SHARD_INTEGRITY,
                          f"sample #{i} is not in the index (index num_samples={n_index})", key, sid)
                continue
            if (key, sid) != (keys[i], ids[i]):
                self.fail(Check.SHARD_INTEGRITY,
                          f"sample #{i} is {key} / {sid!r}, the index lists {keys[i]} / {ids[i]!r}",
                          key, sid)
            elif (nt, nx) != (tcs[i], xcs[i]):
                self.fail(Check.SHARD_INTEGRITY, f"sample #{i} holds {nt} media and {nx} text IDs, the index records "
                                                 f"{tcs[i]} and {xcs[i]}", key, sid)
            elif modalities is not None and modality != modalities[i]:
                self.fail(Check.SHARD_INTEGRITY,
                          f"sample #{i} is {modality!r} in its meta, {modalities[i]!r} in the index",
                          key, sid)
        if len(self.read) < n_index:
            i = len(self.read)
            why = broken or "the tar ends early"
            self.fail(Check.SHARD_INTEGRITY, f"{why}: the tar holds {i} complete samples, its index lists {n_index}; "
                                             f"first missing is #{i}", keys[i], ids[i])
        elif broken:
            self.fail(Check.SHARD_INTEGRITY, broken)
        if src.pos != self.index.get("tar_bytes") or src.sha.hexdigest() != self.index.get("tar_sha256"):
            self.fail(Check.SHARD_INTEGRITY,
                      f"tar is {src.pos} bytes with SHA-256 {src.sha.hexdigest()[:16]}, its index "
                                         f"records {self.index.get('tar_bytes')} bytes and "
                                         f"{str(self.index.get('tar_sha256'))[:16]} (modified after writing)")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _same_shape(a: Any, b: Any) -> bool:
    """Meta shape fields as JSON holds them: lists (grid) or integers (n_tokens), never bools."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(b, (list, tuple)):
        return isinstance(a, list) and list(a) == list(b)
    return a == b


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def scan_shard(task: ShardTask, space: TokenSpace | dict, *, max_seq_len: int | None = None,
               max_examples: int = 20, max_member_bytes: int = 256 * 1024 * 1024) -> ShardSummary:
    """Scan one shard (which must have a tar and a valid index); never raises for bad data."""
    t0 = time.perf_counter()
    if not isinstance(space, TokenSpace):
        space = TokenSpace.from_dict(space)
    scan = _Scan(task, _Expect(space), max_seq_len=max_seq_len, max_examples=max_examples)
    scan.index_checks()
    fs, path = url_to_fs(task.tar_path)
    src = None
    broken: str | None = None
    try:
        raw = fs.open(path, "rb")
    except (OSError, ValueError) as exc:
        scan.fail(Check.SHARD_INTEGRITY, f"cannot open the tar ({exc})")
    else:
        with raw:
            src = TrackingReader(raw)
            broken = _scan_members(scan, src, max_member_bytes)
            try:
                broken = broken or src.end_problem()
                src.drain()
            except OSError as exc:
                broken = broken or f"read error at the end of the tar ({exc})"
    if src is not None:
        scan.against_index(src, broken)
    index = task.index or {}
    errors = [e.get("id") for e in index.get("errors") or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    structural = any(scan.log.counts.get(c, 0) for c in STRUCTURAL)
    return ShardSummary(
        split=task.split, name=task.name, index_ids=list(index.get("ids") or []), index_error_ids=errors,
        samples=scan.samples, findings=scan.log, clean=not structural, tar_bytes=src.pos if src else 0,
        seconds=time.perf_counter() - t0, counts=scan.counts, codebooks=scan.codebooks(), lengths=scan.lengths,
        header_version=scan.header_version, encode_policy=scan.encode_policy,
    )


# ---- check 3, shape sanity: one function per part, each returning its problems ------------------------
def _caption_problems(meta: dict, text: np.ndarray | None) -> list[str]:
    """Captions are strings, and caption_token_lengths count text.npy's IDs per caption."""
    captions, lens = meta.get("captions"), meta.get("caption_token_lengths")
    if "captions" in meta and (not isinstance(captions, list) or not all(isinstance(c, str) for c in captions)):
        return ["captions must be a list of strings"]
    if "caption_token_lengths" not in meta:
        return []
    if not isinstance(lens, list) or not all(_is_count(n) for n in lens):
        return ["caption_token_lengths must be a list of non-negative integers"]
    problems = []
    if isinstance(captions, list) and len(lens) != len(captions):
        problems.append(f"{len(captions)} captions but {len(lens)} caption_token_lengths")
    if text is not None and sum(lens) != text.size:
        problems.append(f"caption_token_lengths sum to {sum(lens)}, text.npy holds {text.size} IDs")
    return problems


def _audio_problems(expect: _Expect, meta: dict, n: int | None) -> list[str]:
    """The audio codec fields equal the token space's, then the frame counts they imply."""
    a = expect.audio
    problems = [f"meta {field_}={meta[field_]!r}, the token space's codec has {want!r}"
                for field_, want in (("n_q", expect.n_q), ("sample_rate", a.get("sample_rate")),
                                     ("channels", a.get("channels")), ("frame_rate", a.get("frame_rate")))
                if field_ in meta and want is not None and not _same(meta[field_], want)]
    n_frames, n_samples = meta.get("n_frames"), meta.get("n_samples")
    if "n_frames" in meta and not (_is_count(n_frames) and n_frames >= 1):
        problems.append(f"meta n_frames={n_frames!r} must be a positive integer")
    elif "n_samples" in meta and not (_is_count(n_samples) and n_samples >= 1):
        problems.append(f"meta n_samples={n_samples!r} must be a positive integer")
    elif "n_frames" in meta and "n_samples" in meta:
        problems += _audio_frame_problems(expect, meta, n, n_frames, n_samples)
    return problems


def _audio_frame_problems(expect: _Expect, meta: dict, n: int | None, n_frames: int, n_samples: int) -> list[str]:
    """Tokens = frames x codes per frame; frames, duration and segments as the codec's hop makes them."""
    a, per, problems = expect.audio, expect.per_frame, []
    if n is not None and per and n != n_frames * per:
        label = "n_q" if expect.audio_layout.kind == "frame_major" else f"tokens_per_frame ({expect.audio_layout.kind})"
        problems.append(f"{n} tokens, but n_frames*{label} = {n_frames}*{per} = {n_frames * per}")
    if expect.hop:
        want = expect.expected_frames(n_samples)
        if n_frames != want:
            problems.append(f"meta n_frames={n_frames} but n_samples={n_samples} at hop "
                            f"{expect.hop} gives {want} frames")
        duration = meta.get("duration")
        if isinstance(duration, (int, float)) and math.isfinite(duration) and a.get("sample_rate"):
            if abs(duration * a["sample_rate"] - n_samples) > expect.hop:
                problems.append(f"meta duration {duration:.4f} s at {a['sample_rate']} Hz is "
                                f"{duration * a['sample_rate']:.0f} samples, n_samples says {n_samples}")
    if a.get("segment_length"):
        segs = expect.segments(n_samples)
        sf = meta.get("segment_frames")
        if not isinstance(sf, list) or len(sf) != len(segs) or sum(sf) != n_frames:
            problems.append(f"meta segment_frames must list {len(segs)} segments summing to n_frames={n_frames}")
        sc = meta.get("scales")
        if not isinstance(sc, list) or len(sc) != len(segs):
            problems.append(f"meta scales must list {len(segs)} per-segment scales")
    return problems


def _image_problems(expect: _Expect, meta: dict, n: int | None) -> list[str]:
    """The image shape fields equal the token space's, and the token count is what that shape needs."""
    proc, shape = meta.get("proc_size"), expect.image_shape
    problems = [f"meta {k} {meta[k]!r}, the token space's image codec has {want!r}"
                for k, want in shape.items() if k in meta and not _same_shape(meta[k], want)]
    if not problems and all(k in meta for k in shape) and n is not None and expect.image_layout is not None:
        try:
            need = expect.image_layout.expected_len(shape)
        except TokenSpaceError as exc:  # a token space whose image codec records no fixed shape
            problems.append(str(exc))
        else:
            if n != need:
                what = (f"grid {shape['grid'][0]}x{shape['grid'][1]}" if "grid" in shape
                        else f"{expect.image_layout.kind} n_tokens {shape.get('n_tokens')}")
                problems.append(f"{n} tokens, but {what} needs {need}")
    if "proc_size" in meta and list(proc or []) != expect.proc_size:
        problems.append(f"meta proc_size {proc!r}, the token space's image codec has {expect.proc_size}")
    return problems


def _scan_members(scan: _Scan, src: TrackingReader, max_member_bytes: int) -> str | None:
    """Feed the members to the scan; returns why parsing stopped early, or None."""
    members = iter_members(src, max_member_bytes)
    try:
        if not scan.header(header_member(members)):
            return "unusable header"
        for key, tokens_b, text_b, meta_b in iter_samples(members):
            scan.sample(key, tokens_b, text_b, meta_b)
        return None
    except TarBroken as exc:
        return str(exc)
