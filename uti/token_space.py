"""The token space: one global ID space of contiguous ranges (special, text, image, audio levels).

It is serialized as canonical JSON; its ID is the SHA-256 of those bytes. Everything that carries
tokens (shards, samples, checkpoints, reports) carries the ID, and anything loaded with another ID
is refused with both IDs and a diff of what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from uti.atomic import atomic_write
from uti.errors import RuntimeSizeMismatch, TokenSpaceError, TokenSpaceMismatch

log = logging.getLogger(__name__)

FORMAT = "uti.token_space"
# Version 2 (this one) records everything that changes a codec's output: a Hugging Face tokenizer's whole
# definition (not its folder name) and an image model's architecture config. Version 1 files are still
# read, and codecs are compared with them by the version-1 recipe (see CodecDescriptor and
# UnifiedTokenizer); a version-1 and a version-2 space never have the same ID.
VERSION = 2
READABLE_VERSIONS = (1, 2)
JSON_NAME = "token_space.json"
SHA_NAME = "token_space.sha256"
LEVEL_ORDER = "frame_major"  # frame 0 levels 0..n_q-1, then frame 1, ...

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

    def to_dict(self) -> dict:
        return {
            "modality": self.modality, "kind": self.kind, "name": self.name,
            "weights": self.weights, "fingerprint": self.fingerprint, "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CodecDescriptor":
        _require_keys(data, ("modality", "kind", "name", "weights", "fingerprint", "params"), "codec descriptor")
        return cls(**{k: data[k] for k in ("modality", "kind", "name", "weights", "fingerprint")},
                   params=dict(data["params"]))


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
        """Lay out ranges in the fixed order special, text, image, audio.l0..l{n_q-1}."""
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
        return {
            "format": FORMAT,
            "version": self.version,
            "vocab_size": self.vocab_size,
            "level_order": LEVEL_ORDER,
            "ranges": [r.to_dict() for r in self.ranges],
            "specials": dict(self.specials),
            "codecs": {m: c.to_dict() for m, c in self.codecs.items()},
        }

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
        _require_keys(data, ("format", "version", "vocab_size", "level_order", "ranges", "specials", "codecs"), where)
        if data["format"] != FORMAT:
            raise TokenSpaceError(f"{where}: format is {data['format']!r}, expected {FORMAT!r}")
        if type(data["version"]) is not int or data["version"] not in READABLE_VERSIONS:
            raise TokenSpaceError(
                f"{where}: version {data['version']!r} is not supported by this reader (reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade uti to read it"
            )
        if data["level_order"] != LEVEL_ORDER:
            raise TokenSpaceError(f"{where}: level_order {data['level_order']!r}, expected {LEVEL_ORDER!r}")
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

    def write(self, directory: str | os.PathLike) -> Path:
        """Write token_space.json and token_space.sha256 (sha256sum format) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        raw = self.canonical_json()
        atomic_write(directory / JSON_NAME, raw)
        atomic_write(directory / SHA_NAME, f"{sha256_hex(raw)}  {JSON_NAME}\n".encode())
        return directory / JSON_NAME

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenSpace":
        """Load from a directory holding both files (or the JSON path); the SHA file must match exactly."""
        path = Path(path)
        json_path = path / JSON_NAME if path.is_dir() else path
        sha_path = json_path.with_name(SHA_NAME)
        if not json_path.is_file():
            raise TokenSpaceError(f"{json_path}: no token space here; write one with `uti tokenspace build`")
        raw = json_path.read_bytes()
        space = cls.from_json_bytes(raw, where=str(json_path))
        if sha_path.is_file():
            recorded = sha_path.read_text().split()[0] if sha_path.read_text().split() else ""
            if recorded != space.id:
                raise TokenSpaceError(
                    f"{sha_path}: records {recorded[:16]!r} but {json_path.name} hashes to {space.id[:16]}; "
                    "one of the two files was changed. Restore both from the same job"
                )
        else:
            raise TokenSpaceError(f"{sha_path}: missing; token_space.json and token_space.sha256 travel together")
        return space

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
        if not sha_path.is_file() or sha_path.read_text().split()[:1] != [space.id]:
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
    never silently ignored. Returns None when the two are identical.
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
                  "weights, or pass the explicit override flag if you know what you are doing"),
        expected_id=eid, found_id=fid, changes=changes,
    )
