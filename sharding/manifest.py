"""Manifest rows, their JSONL file, hash-based splits, and building a manifest from a dataset adapter.

A manifest is one canonical JSON object per line (sorted keys, UTF-8), rows sorted by canonical ID.
Its SHA-256 goes into the shard plan, so the same manifest always means the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from uti.errors import ConfigError, UTIError
from uti.modalities import MODALITIES
from uti.strict import from_dict, to_dict
from uti.token_space import canonical_json

from sharding.paths import PathEscapeError, atomic_write_bytes
from sharding.storage import is_url

DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.98, "val": 0.01, "test": 0.01}
SUMMARY_FORMAT = "uti.manifest_summary"
SUMMARY_VERSION = 1
# The HashSplits that build_manifest hands an adapter with its options (never a user's option).
HASH_SPLITS_OPTION = "hash_splits"
# The RowSubset that build_manifest hands an adapter taking max_rows, to say what the subset left out.
SUBSET_OPTION = "row_subset"


class ManifestError(UTIError, ValueError):
    """A dataset layout or manifest file is unusable; the message names the file/row and the fix."""


@dataclass(kw_only=True, frozen=True, slots=True)  # slots: ~40% less memory per row at 10^6 rows
class ManifestRow:
    """One sample: canonical ID `{dataset}:{item_key}`, resolved source path, captions, split, size hints."""

    id: str
    dataset: str
    modality: str
    path: str | None
    captions: tuple[str, ...] = ()
    split: str
    duration: float | None = None
    bytes: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dataset or ":" in self.dataset:
            raise ManifestError(f"row {self.id!r}: dataset name {self.dataset!r} must be non-empty without ':'")
        if not self.id.startswith(f"{self.dataset}:") or len(self.id) == len(self.dataset) + 1:
            raise ManifestError(f"row {self.id!r}: id must be '{self.dataset}:<item key>'")
        if self.modality not in MODALITIES:
            raise ManifestError(f"row {self.id!r}: modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if self.path is None and self.modality != "text":
            raise ManifestError(f"row {self.id!r}: {self.modality} rows need a source path")
        if not self.split:
            raise ManifestError(f"row {self.id!r}: split must be non-empty")
        # Lists from JSON or adapters become tuples so rows stay immutable and compare equal.
        object.__setattr__(self, "captions", tuple(self.captions))
        if not all(isinstance(c, str) for c in self.captions):
            raise ManifestError(f"row {self.id!r}: captions must be strings")
        if self.duration is not None and (not math.isfinite(self.duration) or self.duration < 0):
            raise ManifestError(f"row {self.id!r}: duration must be a finite number >= 0, got {self.duration!r}")
        if self.bytes is not None and self.bytes < 0:
            raise ManifestError(f"row {self.id!r}: bytes must be >= 0, got {self.bytes!r}")

    @property
    def key(self) -> str:
        """The item's own key (the canonical ID without the dataset prefix)."""
        return self.id[len(self.dataset) + 1 :]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self) -> str:
        """The canonical one-line JSON form written to manifests."""
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "manifest row") -> "ManifestRow":
        try:
            return from_dict(cls, data, where=where)
        except ConfigError as exc:
            raise ManifestError(str(exc)) from None
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None


@dataclass(kw_only=True, frozen=True)
class Rejected:
    """An item an adapter could not turn into a row. `missing` marks an absent media file."""

    item: str
    reason: str
    path: str | None = None
    missing: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item": self.item, "reason": self.reason}
        if self.path is not None:
            out["path"] = self.path
        return out


# ---------------------------------------------------------------------------------------------- splits


def check_split_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validated copy of `fractions`: names non-empty, values >= 0, sum 1."""
    if not fractions:
        raise ManifestError("split fractions are empty; give e.g. train=0.98,val=0.01,test=0.01")
    out: dict[str, float] = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name or any(c in name for c in "/\\:,= "):
            raise ManifestError(f"split name {name!r} must be non-empty without '/', ':', ',', '=' or spaces")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ManifestError(f"split fraction for {name!r} must be a number >= 0, got {value!r}")
        out[name] = float(value)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ManifestError(f"split fractions must sum to 1, got {total:g} ({format_split_fractions(out)})")
    return out


def parse_split_fractions(text: str) -> dict[str, float]:
    """Parse `train=0.9,val=0.05,test=0.05` (the --split-fractions flag)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ManifestError(f"--split-fractions: {part!r} is not NAME=FRACTION (e.g. train=0.9,val=0.05,test=0.05)")
        if name in out:
            raise ManifestError(f"--split-fractions: split {name!r} given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise ManifestError(f"--split-fractions: {value.strip()!r} for {name!r} is not a number") from None
    return check_split_fractions(out)


def format_split_fractions(fractions: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in fractions.items())


def hash_split(canonical_id: str, fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """The split of an ID from SHA-256(id) mapped to [0, 1).

    A row's split depends only on its own ID, so adding rows never moves an existing one. Splits are
    laid out in name order, so the result does not depend on how the fractions were spelled.
    """
    return _split_of(canonical_id, check_split_fractions(fractions))


def _split_of(canonical_id: str, fractions: Mapping[str, float]) -> str:
    """hash_split on fractions already checked (HashSplits checks them once, not once per row)."""
    digest = hashlib.sha256(canonical_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    names = [n for n in sorted(fractions) if fractions[n] > 0]
    upper = 0.0
    for name in names:
        upper += fractions[name]
        if u < upper:
            return name
    return names[-1]  # float rounding can leave the sum a hair under 1


@dataclass
class HashSplits:
    """`hash_split` for an adapter's rows that have no split of their own, counting the rows it assigns:
    a split the fractions promise that gets no row is then named (`ManifestBuild.empty_splits`)."""

    fractions: dict[str, float]
    assigned: int = 0

    def __post_init__(self) -> None:
        self.fractions = check_split_fractions(self.fractions)

    def __call__(self, canonical_id: str) -> str:
        self.assigned += 1
        return _split_of(canonical_id, self.fractions)


@dataclass
class RowSubset:
    """What an adapter's --max-rows subset did: `of` rows could be taken (media found, not rejected, in the
    requested splits) and `left_out` of them were not. Left-out rows are neither rows nor rejections, so
    the summary counts them here; `max_rows` stays None when no subset was asked for."""

    max_rows: int | None = None
    of: int = 0
    left_out: int = 0

    def to_dict(self) -> dict[str, int | None]:
        return {"max_rows": self.max_rows, "of": self.of, "left_out": self.left_out}


@dataclass(frozen=True)
class EmptySplit:
    """A split that got no row: why, and the flag that fixes it."""

    split: str
    reason: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"split": self.split, "reason": self.reason, "fix": self.fix}


def roomier_fractions(fractions: Mapping[str, float], rows: int, empty: Sequence[str]) -> dict[str, float] | None:
    """Fractions under which each of the `empty` splits expects about 5 of `rows` rows (a 0.7% chance of
    none), taken from the largest split; None when that leaves the largest split nothing."""
    want = {name: max(fractions[name], math.ceil(500 / max(rows, 1)) / 100) for name in empty}
    largest = max(fractions, key=lambda n: fractions[n])
    out = {**fractions, **want}
    out[largest] = round(1.0 - sum(v for n, v in out.items() if n != largest), 6)
    return out if largest not in want and out[largest] > 0 else None


# --------------------------------------------------------------------------------------------- file IO


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> str:
    """Write rows sorted by ID as canonical JSONL (atomically) and return the file's SHA-256."""
    ordered = sorted(rows, key=lambda r: r.id)
    _refuse_duplicates([(r.id, f"row {i}") for i, r in enumerate(ordered)], where=str(path))
    atomic_write_bytes(path, ((r.to_json() + "\n").encode("utf-8") for r in ordered))
    return manifest_sha256(path)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read and validate a manifest; errors name the line. Duplicate IDs are refused, all named."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; create it with `uti manifest ... --out {path}`")
    rows: list[ManifestRow] = []
    seen: list[tuple[str, str]] = []
    decode = _fast_decoder()
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            row = _fast_row(decode, raw, where=lambda: f"{path} line {lineno}")
            if row is not None:
                rows.append(row)
                seen.append((row.id, lineno))  # an int, formatted only for an error: 10^6 strings cost ~70 MB
                continue
            # Blank, or not a valid row: the strict path below skips it or raises the error naming the field.
            try:
                row = _strict_row(raw, path=path, where=f"{path} line {lineno}")
            except ManifestError:
                if not rows:  # the first row: a JSON document (a source file) is named as one
                    _refuse_json_document(path)
                raise
            if row is None:
                continue
            rows.append(row)
            seen.append((row.id, lineno))
    _refuse_duplicates(seen, where=str(path))
    return rows


def _strict_row(raw: bytes, *, path: Path, where: str) -> ManifestRow | None:
    """The row on one line (None for a blank line), or the ManifestError naming the line and the field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, absurd integers, absurd nesting
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ManifestError(f"{where}: not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
    _require_manifest_keys(data, path=path, where=where)
    return ManifestRow.from_dict(data, where=where)


def _refuse_json_document(path: Path) -> None:
    """A JSON document given as a manifest (a dataset's source file): say what it is and what reads it."""
    from sharding.datasets.sniff import json_document_hint  # the adapters' knowledge; imported lazily (a cycle)

    hint = json_document_hint(path)
    if hint:
        raise ManifestError(f"not a uti manifest: {hint}") from None


def _fast_decoder():
    """A msgspec decoder of one manifest line into a struct with ManifestRow's fields and types.

    It parses and type-checks a row in ~1 us where the generic strict path takes ~100 us: a 600k-row
    manifest is read in seconds. Only rows it accepts take this path; anything it refuses goes
    through the strict path, whose errors name the file, line and field, so messages stay the same.
    """
    import msgspec

    global _DECODER
    if _DECODER is None:
        row_struct = msgspec.defstruct(
            "ManifestRowFields",
            [("id", str), ("dataset", str), ("modality", str), ("path", str | None),
             ("captions", tuple[str, ...], ()), ("split", str), ("duration", float | None, None),
             ("bytes", int | None, None), ("extra", dict, {})],
            forbid_unknown_fields=True, kw_only=True)
        _DECODER = msgspec.json.Decoder(row_struct), row_struct, msgspec.structs.asdict
    return _DECODER


_DECODER = None


def _fast_row(decoder, raw: bytes, *, where) -> ManifestRow | None:
    """The row on `raw`, or None when the fast decoder refuses it (the strict path then explains why)."""
    import msgspec

    decode, _, asdict = decoder
    try:
        fields_ = decode.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    try:
        return ManifestRow(**asdict(fields_))
    except ManifestError as exc:  # the row's own checks (id prefix, modality, duration, ...)
        raise ManifestError(f"{where()}: {exc}") from None


_REQUIRED_KEYS = tuple(f.name for f in fields(ManifestRow)
                       if f.default is MISSING and f.default_factory is MISSING)  # id, dataset, modality, path, split


def _require_manifest_keys(data: dict, *, path: Path, where: str) -> None:
    """A row without `dataset` (a key only `uti manifest` writes) is not from a manifest: most often it is
    the source JSONL given to --manifest instead of the manifest made from it. Other missing keys are
    named plainly (unknown keys, typos such as 'splitt', are left to from_dict, which names them)."""
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if not missing:
        return
    if "dataset" in missing:
        raise ManifestError(
            f"{where}: not a uti manifest (no {', '.join(repr(k) for k in missing)}); {path} looks like a source "
            f"list, not a manifest written by `uti manifest`. Make one from it with `uti manifest --dataset jsonl "
            f"--root DIR --file {path} --name NAME --out manifest.jsonl` (DIR: the folder its paths are relative "
            "to) and pass that to --manifest")
    if set(data) <= {f.name for f in fields(ManifestRow)}:
        raise ManifestError(f"{where}: manifest row without {', '.join(repr(k) for k in missing)}; every row has "
                            f"{', '.join(_REQUIRED_KEYS)}: rewrite the manifest with `uti manifest`")


def read_manifests(paths: Sequence[str | os.PathLike]) -> list[ManifestRow]:
    """Rows of several manifests concatenated; an ID in two manifests is refused naming both files."""
    rows: list[ManifestRow] = []
    seen: list[tuple[str, str]] = []
    for p in paths:
        for row in read_manifest(p):
            rows.append(row)
            seen.append((row.id, str(p)))
    _refuse_duplicates(seen, where="manifests " + ", ".join(str(p) for p in paths))
    return rows


def _refuse_duplicates(ids: Iterable[tuple[str, str | int]], *, where: str) -> None:
    """`ids`: (id, where it is); an int location is a line number."""
    first: dict[str, str | int] = {}
    dups: list[str] = []

    def loc_text(loc: str | int) -> str:
        return f"line {loc}" if isinstance(loc, int) else loc

    for id_, loc in ids:
        if id_ in first:
            dups.append(f"{id_!r} ({loc_text(first[id_])} and {loc_text(loc)})")
        else:
            first[id_] = loc
    if dups:
        shown = "; ".join(dups[:10]) + (f"; ... {len(dups) - 10} more" if len(dups) > 10 else "")
        raise ManifestError(f"{where}: {len(dups)} duplicate canonical ID(s): {shown}; every ID must appear once")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the manifest file's bytes."""
    return file_sha256(path)


def manifests_sha256(paths: Sequence[str | os.PathLike]) -> str:
    """One hash for several manifests: SHA-256 of their sorted SHA-256s joined by newlines.

    A single manifest keeps its own file hash, so `sha256sum manifest.jsonl` matches the plan.
    The order of `paths` does not matter.
    """
    if not paths:
        raise ManifestError("no manifest given; pass at least one --manifest FILE")
    hashes = sorted(manifest_sha256(p) for p in paths)
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


# -------------------------------------------------------------------------------------------- building


@dataclass(kw_only=True)
class ManifestBuild:
    """What an adapter produced: rows sorted by ID, absent media files, and rejected items."""

    dataset: str
    root: str
    rows: list[ManifestRow]
    missing: list[Rejected]
    rejected: list[Rejected]
    splits: tuple[str, ...] | None = None
    options: dict = field(default_factory=dict)
    follow_symlinks: bool = False  # --follow-symlinks: symlinks inside root were followed out of it
    hash_splits: HashSplits | None = None  # the hash split of rows without their own, for adapters that have one
    subset: RowSubset | None = None  # the --max-rows subset, when one was asked for

    def empty_splits(self) -> list[EmptySplit]:
        """Every split that was asked for (--split) or that the hash fractions promise, with no row."""
        counts = Counter(r.split for r in self.rows)
        hashing = self.hash_splits if self.hash_splits is not None and self.hash_splits.assigned else None
        found: list[EmptySplit] = []
        promised = [n for n, f in hashing.fractions.items() if f > 0] if hashing else []
        for name in dict.fromkeys([*(self.splits or ()), *promised]):
            if counts[name]:
                continue
            if hashing is not None and name in hashing.fractions:
                reason = (f"the hash split {format_split_fractions(hashing.fractions)} gave it none of "
                          f"{hashing.assigned} rows")
                empty = [n for n in promised if not counts[n]]
                better = roomier_fractions(hashing.fractions, hashing.assigned, empty)
                fix = (f"fix: rerun with --split-fractions {format_split_fractions(better)} (about 5 rows in each "
                       "small split)" if better else "fix: rerun with --split-fractions giving it a larger fraction")
                fix += f", or one without {name} if the dataset is too small for it"
            else:
                reason = "no row of the dataset is in this split"
                fix = "fix: check --split against the dataset's split names"
            found.append(EmptySplit(split=name, reason=reason, fix=fix))
        return found

    def by_extension(self) -> dict[str, int]:
        """{".flac": n, ".m4a": n, ...} over the rows with a media file: a folder of mixed downloads shows
        what it holds (and so which decoders the job needs) before anything is tokenized."""
        from sharding.datasets.patterns import extension_of

        counts = Counter(extension_of(r.path) for r in self.rows if r.path and r.modality != "text"
                         and not (r.extra or {}).get("hf_source"))
        return dict(sorted(counts.items()))

    def summary(self, *, manifest: str | None = None, manifest_sha256: str | None = None) -> dict[str, Any]:
        by_split: dict[str, dict[str, int]] = {}
        for row in self.rows:
            counts = by_split.setdefault(row.split, {})
            counts[row.modality] = counts.get(row.modality, 0) + 1
        subset = {"subset": self.subset.to_dict()} if self.subset is not None else {}  # only with --max-rows
        return {
            "format": SUMMARY_FORMAT,
            "version": SUMMARY_VERSION,
            "dataset": self.dataset,
            "root": self.root,
            "splits_requested": list(self.splits) if self.splits else None,
            "options": to_dict(self.options),
            "follow_symlinks": self.follow_symlinks,
            "manifest": manifest,
            "manifest_sha256": manifest_sha256,
            "rows": len(self.rows),
            "by_split": by_split,
            "empty_splits": [e.to_dict() for e in self.empty_splits()],
            "by_modality": dict(sorted(Counter(r.modality for r in self.rows).items())),
            "by_extension": self.by_extension(),
            "missing": {"count": len(self.missing), "files": [m.to_dict() for m in self.missing]},
            "rejected": {"count": len(self.rejected), "rows": [r.to_dict() for r in self.rejected]},
            **subset,
        }


def build_manifest(
    dataset: str, root: str | os.PathLike, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False,
    **options: Any,
) -> ManifestBuild:
    """Run dataset adapter `dataset` over `root`; duplicates and wrong splits are filtered and reported.

    Source paths stay confined to root (symlinks resolved) unless follow_symlinks (see sharding.paths).
    """
    from sharding.datasets import get_dataset  # adapters import this module; import lazily to avoid a cycle

    adapter = get_dataset(dataset)
    adapter.check_options(options)
    hashing = None
    if "split_fractions" in adapter.options:  # an adapter that hash-splits rows without a split of their own
        hashing = HashSplits(dict(options.get("split_fractions") or DEFAULT_SPLIT_FRACTIONS))
    if is_url(root):  # before Path(): "s3://b/x" would become the local folder "s3:/b/x"
        root_path: Any = _object_root(dataset, adapter, os.fspath(root))
        root_text = root_path.url
    else:
        root_path = Path(root)
        if not root_path.exists():
            raise ManifestError(f"dataset root {root} does not exist; pass the dataset's folder with --root")
        root_text = os.path.realpath(root_path)
    splits = tuple(dict.fromkeys(splits)) if splits else None
    rows: dict[str, ManifestRow] = {}
    missing: list[Rejected] = []
    rejected: list[Rejected] = []
    hashed: dict[str, Any] = {HASH_SPLITS_OPTION: hashing} if hashing is not None else {}
    subset = RowSubset() if "max_rows" in adapter.options else None
    if subset is not None:
        hashed[SUBSET_OPTION] = subset
    for item in adapter.rows(root_path, splits=splits, follow_symlinks=follow_symlinks, **options, **hashed):
        if isinstance(item, Rejected):
            (missing if item.missing else rejected).append(item)
        elif splits is not None and item.split not in splits:
            continue
        elif item.id in rows:
            first = rows[item.id].split
            reason = f"duplicate canonical ID (also in split {first!r}); kept the first"
            rejected.append(Rejected(item=item.id, reason=reason, path=item.path))
        else:
            rows[item.id] = item
    return ManifestBuild(
        dataset=dataset,
        root=root_text,
        rows=sorted(rows.values(), key=lambda r: r.id),
        missing=missing,
        rejected=rejected,
        splits=splits,
        options=dict(options),
        follow_symlinks=follow_symlinks,
        hash_splits=hashing,
        subset=subset if subset is not None and subset.max_rows is not None else None,
    )


def _object_root(dataset: str, adapter: Any, url: str) -> Any:
    """The listed object-store root for adapters that read their layout through Path-like calls only."""
    from sharding.object_root import ObjectRoot

    if not getattr(adapter, "object_store", False):
        raise ManifestError(
            f"--root {url}: not supported yet for dataset {dataset!r}: media in an object store work for "
            "clotho and llava; copy or mount this dataset on a filesystem every node sees and pass that folder")
    root = ObjectRoot.open(url)
    if not root.is_dir():
        raise ManifestError(f"dataset root {url} holds no objects; pass the prefix holding the dataset with --root")
    return root


def summary_path(manifest_path: str | os.PathLike) -> Path:
    """`manifest.jsonl` -> `manifest.summary.json`, next to it."""
    p = Path(manifest_path)
    return p.with_suffix(".summary.json") if p.suffix else p.with_name(p.name + ".summary.json")


def make_manifest(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build a manifest, write it and its summary next to it, and return the summary.

    An empty result is an error (after the summary is written, so the reasons can be read there).
    """
    build = build_manifest(dataset, root, splits=splits, **options)
    out = Path(out)
    spath = summary_path(out)
    if not build.rows:
        summary = build.summary()
        atomic_write_bytes(spath, json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
        hint = (build.missing or build.rejected)[:1]
        why = f"; first problem: {hint[0].item}: {hint[0].reason}" if hint else ""
        raise ManifestError(
            f"dataset {dataset!r} at {root} gave no rows ({len(build.missing)} missing files, "
            f"{len(build.rejected)} rejected{why}); check --root, --split and the file-name options; details in {spath}"
        )
    sha = write_manifest(out, build.rows)
    summary = build.summary(manifest=str(out), manifest_sha256=sha)
    atomic_write_bytes(spath, json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return summary


__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "EmptySplit",
    "HashSplits",
    "MODALITIES",
    "ManifestBuild",
    "ManifestError",
    "ManifestRow",
    "PathEscapeError",
    "Rejected",
    "RowSubset",
    "build_manifest",
    "check_split_fractions",
    "file_sha256",
    "hash_split",
    "make_manifest",
    "manifest_sha256",
    "manifests_sha256",
    "parse_split_fractions",
    "read_manifest",
    "read_manifests",
    "summary_path",
    "write_manifest",
]
