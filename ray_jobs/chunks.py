"""Chunks are the unit of work, shards the unit of storage and commit.

A chunk is a run of consecutive rows of one shard, in plan order: about `--batch-seconds` of audio or
`--max-images-per-batch` images. Any codec actor encodes any chunk into an `EncodedChunk` (the finished
samples of its rows, or their per-sample errors); once every chunk of a shard is encoded, `write_shard_task`
(a light CPU task) puts them back in plan order and commits the shard through the shard writer: tar, then
index last. The shard's bytes depend only on its rows, never on which actor encoded which chunk or when.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from sharding.format import Sample


@dataclass(kw_only=True, frozen=True)
class ChunkRef:
    """Where a chunk sits in the plan: rows [start, end) of shard `split/shard`, chunk `index` of `count`."""

    split: str
    shard: str
    index: int
    count: int
    start: int
    end: int
    cost: float = 1.0  # its work in full chunks (audio seconds / --batch-seconds + images / --max-images-per-batch)
    # The shard positions of its rows when the shard's rows were put in length-bucket order (bucket_order);
    # None: the plan-order rows [start, end).
    positions: tuple[int, ...] | None = None

    @property
    def shard_key(self) -> str:
        return f"{self.split}/{self.shard}"

    def row_ids(self, shard_ids: Sequence[str]) -> list[str]:
        """The IDs of this chunk's rows, from its shard's IDs in plan order."""
        if self.positions is not None:
            return [shard_ids[i] for i in self.positions]
        return list(shard_ids[self.start: self.end])


@dataclass(kw_only=True)
class EncodedChunk:
    """What an actor made of a chunk, kept in the object store until its shard is written: the samples
    (sharding.format.Sample, as build_sample made them) and per-sample errors (their errors.jsonl rows),
    each in plan order."""

    ids: list[str]
    samples: list[Sample]
    errors: list[dict]


@dataclass(kw_only=True, frozen=True)
class PassFigures:
    """One media modality's forward passes in one chunk: what the codec's uti.codecs.batching.PassLog
    recorded (real items per pass -> passes in `sizes`, dummy items, seconds in forward passes).

    `logged` False: the adapter keeps no pass log (a plugin that does not use timed_passes), so its
    passes are counted as the codec contract says (encode_batch items a pass, the last one filled with
    dummies; one item a pass at encode_batch 1) and timed as its share of the encode calls."""

    passes: int
    items: int
    dummies: int
    seconds: float
    sizes: dict[int, int] = field(default_factory=dict)
    logged: bool = True


def chunk_pass_figures(logs: dict[str, Any], *, items: dict[str, int], batches: dict[str, int],
                       encode_seconds: float) -> dict[str, PassFigures]:
    """{modality: PassFigures} of a chunk from each codec's taken pass log (`logs`), the items each codec
    was given and its encode batch; `encode_seconds` (the whole encode of the chunk) times the passes of
    codecs that log none, shared by their items."""
    out: dict[str, PassFigures] = {}
    unlogged = [m for m, log in logs.items() if not log.passes and items.get(m, 0)]
    logged_seconds = sum(log.seconds for m, log in logs.items() if m not in unlogged)
    unlogged_items = sum(items[m] for m in unlogged)
    for m, log in logs.items():
        if m in unlogged:
            seconds = max(0.0, encode_seconds - logged_seconds) * items[m] / unlogged_items
            out[m] = contract_passes(items[m], batches.get(m, 1), seconds)
        elif log.passes:
            out[m] = PassFigures(passes=log.passes, items=log.items, dummies=log.dummies, seconds=log.seconds,
                                 sizes=dict(log.sizes))
    return out


def contract_passes(items: int, encode_batch: int, seconds: float) -> PassFigures:
    """The passes a codec's contract implies for `items` items: full passes of encode_batch, the last one
    filled with dummies (at encode_batch 1, one item a pass)."""
    full, rest = divmod(items, encode_batch)
    sizes = {encode_batch: full} if full else {}
    if rest:
        sizes[rest] = 1
    passes = full + (1 if rest else 0)
    return PassFigures(passes=passes, items=items, dummies=passes * encode_batch - items, seconds=seconds,
                       sizes=sizes, logged=False)


@dataclass(kw_only=True, frozen=True)
class ChunkStats:
    """The small part of an encoded chunk the driver reads: timings for the summary and the progress."""

    split: str
    shard: str
    index: int
    num_samples: int
    num_errors: int
    audio_seconds: float
    images: int
    busy: float  # seconds encoding
    wait: float  # seconds waiting for the chunk's media to be read
    pid: int
    started_at: float
    finished_at: float
    tokens: int = 0  # media and caption tokens of its samples
    passes: dict[str, PassFigures] = field(default_factory=dict)  # its forward passes, per media modality


@dataclass(kw_only=True, frozen=True)
class ShardResult:
    """A committed shard, as the writer task reports it."""

    split: str
    shard: str
    num_samples: int
    num_errors: int
    audio_seconds: float
    images: int
    media_tokens: int
    text_tokens: int
    modalities: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)
    write_seconds: float = 0.0


# A shard's last chunks get smaller (guided self-scheduling): the actor that takes the final chunk of a
# job does not encode a full --batch-seconds while the others wait (with equal chunks, two actors on a
# one-shard job were busy 90% of the time, the idle tenth at the end). Each chunk of the tail takes 1/(2 x
# TAPER_ACTORS) of the work left in the shard, never less than TAPER_FLOOR of a full chunk. The
# constants, not the cluster's size, set the cut, so a shard's chunks depend only on its rows.
TAPER_ACTORS = 2
TAPER_FLOOR = 0.25


def work_left(durations: Sequence[float | None], modalities: Sequence[str], *, batch_seconds: float,
              max_images: int) -> list[float]:
    """left[i]: the work from row i to the shard's end, in full chunks (audio by seconds, images by count);
    left[len(rows)] is 0, so rows [a, b) hold left[a] - left[b] of it."""
    left = [0.0] * (len(durations) + 1)
    for i in range(len(durations) - 1, -1, -1):
        cost = ((durations[i] or 0.0) / batch_seconds if modalities[i] == "audio" else 0.0) \
            + (1.0 / max_images if modalities[i] == "image" else 0.0)
        left[i] = left[i + 1] + cost
    return left


def chunk_bounds(durations: Sequence[float | None], modalities: Sequence[str], *, batch_seconds: float,
                 max_images: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of consecutive rows holding about batch_seconds of audio or max_images images
    (less towards the shard's end: see TAPER_ACTORS).

    Depends only on the rows (not on the cluster), so a shard's chunks are the same on every run."""
    seconds_of = [(d or 0.0) if m == "audio" else 0.0 for d, m in zip(durations, modalities)]
    is_image = [m == "image" for m in modalities]
    left = work_left(durations, modalities, batch_seconds=batch_seconds, max_images=max_images)
    bounds: list[tuple[int, int]] = []
    start, seconds, images = 0, 0.0, 0
    share = _share(left[0])
    for i in range(len(seconds_of)):
        if i > start and (seconds + seconds_of[i] > batch_seconds * share or images >= max(1, round(max_images * share))):
            bounds.append((start, i))
            start, seconds, images = i, 0.0, 0
            share = _share(left[i])
        seconds += seconds_of[i]
        images += is_image[i]
    if start < len(seconds_of):
        bounds.append((start, len(seconds_of)))
    return bounds


def _share(left: float) -> float:
    """The size of a chunk starting with `left` full chunks of work still to do, as a fraction of a full one."""
    return min(1.0, max(TAPER_FLOOR, left / (2 * TAPER_ACTORS)))


def bucket_order(rows: Sequence[Any]) -> list[int]:
    """Shard positions with audio rows grouped by length bucket (uti.buckets, from the manifest's duration),
    then images, then text, each group in plan order.

    With an encode batch B > 1 every forward pass holds B items of one bucket, the rest dummies; chunks cut
    from plan order would hold a few items of each of ~20 buckets (clips of 1-30 s), so most rows of most
    passes would be dummies. Cut from this order, a chunk holds runs of one bucket. Which rows share a
    chunk never changes a code (the passes have fixed shapes), and the shard is written in plan order."""
    from uti.buckets import duration_bucket

    def key(i: int) -> tuple:
        row = rows[i]
        group = {"audio": 0, "image": 1}.get(row.modality, 2)
        return (group, duration_bucket(row.duration) if group == 0 else 0, i)

    return sorted(range(len(rows)), key=key)


def bucketed_chunks(encode_policy: dict[str, dict[str, Any]]) -> bool:
    """Whether chunks are cut in bucket order: when a codec's passes take more than one item (the actors'
    encode policy; a job's chunks then depend on the rows, the config and the device type, as its tokens do)."""
    return any(int(p.get("encode_batch", 1)) > 1 for p in encode_policy.values())


def shard_chunks(split: str, shard: Any, row_of: Callable[[str], Any], *, batch_seconds: float,
                 max_images: int, bucketed: bool = False) -> list[ChunkRef]:
    """The chunks of one planned shard (`shard.ids` in plan order; `row_of` maps an ID to its ManifestRow).
    `bucketed` (an encode batch above 1): cut from the rows in bucket_order, not plan order."""
    rows = [row_of(x) for x in shard.ids]
    order = bucket_order(rows) if bucketed else None
    if order is not None:
        rows = [rows[i] for i in order]
    durations, modalities = [r.duration for r in rows], [r.modality for r in rows]
    bounds = chunk_bounds(durations, modalities, batch_seconds=batch_seconds, max_images=max_images)
    left = work_left(durations, modalities, batch_seconds=batch_seconds, max_images=max_images)
    return [ChunkRef(split=split, shard=shard.name, index=i, count=len(bounds), start=a, end=b, cost=left[a] - left[b],
                     positions=tuple(order[a:b]) if order is not None else None)
            for i, (a, b) in enumerate(bounds)]


def assemble(ids: Sequence[str], chunks: Sequence[EncodedChunk], *, where: str) -> tuple[list[Sample], list[dict]]:
    """The shard's samples and errors in plan order from its chunks (given in chunk order); every row
    exactly once, or an error naming the shard (never a shard with a row missing or written twice)."""
    samples = [s for c in chunks for s in c.samples]
    errors = [e for c in chunks for e in c.errors]
    covered = [x for c in chunks for x in c.ids]
    # In plan order, or in bucket order (bucket_order): the same rows, each once.
    if len(covered) != len(ids) or set(covered) != set(ids):
        raise RuntimeError(f"{where}: the encoded chunks cover {len(covered)} rows, the plan has {len(ids)} "
                           "(exactly-once violated before writing)")
    written = [s.id for s in samples]
    failed = {e["id"] for e in errors}
    if len(set(written)) != len(written) or set(written) & failed or set(written) | failed != set(ids):
        lost = sorted(set(ids) - set(written) - failed)
        raise RuntimeError(f"{where}: exactly-once violated before writing (lost {lost[:3]})")
    order = {x: i for i, x in enumerate(ids)}
    samples.sort(key=lambda s: order[s.id])  # the shard's bytes follow the plan, whatever order its chunks took
    return samples, sorted(errors, key=lambda e: e["id"])


def prepare_writer() -> None:
    """A no-op task of the writers' shape, sent as the work starts: the worker process that commits the
    first shard is then started, and has imported the writer, while the actors encode. Where every CPU
    holds a codec actor no idle worker is left, and starting one cost ~1 s at the end of a one-shard job,
    with every actor idle."""
    import sharding.writer  # noqa: F401
    import uti.token_space  # noqa: F401


def write_shard_task(out: str, split: str, shard: str, ids: list[str], token_space_json: bytes, extra: dict,
                     *chunks: EncodedChunk, encode_policy: dict[str, dict] | None = None) -> ShardResult:
    """Commit one shard from its encoded chunks (a Ray task; the chunks arrive resolved, in chunk order).
    `encode_policy`: {modality: EncodePolicy dict} of the media its rows hold, for the header (version 2)."""
    from sharding.writer import write_shard
    from uti.token_space import TokenSpace

    started = time.perf_counter()
    space = TokenSpace.from_json_bytes(token_space_json, where="job token space")
    samples, errors = assemble(ids, chunks, where=f"{split}/{shard}")
    index = write_shard(out, split=split, shard=shard, token_space=space, samples=[s.to_dict() for s in samples],
                        errors=errors, extra=extra, encode_policy=encode_policy)
    modalities: dict[str, int] = {}
    reasons: dict[str, int] = {}
    audio_seconds = 0.0
    media_tokens = text_tokens = images = 0
    for s in samples:
        modality = s.meta.modality
        modalities[modality] = modalities.get(modality, 0) + 1
        media_tokens += int(s.tokens.size)
        text_tokens += int(s.text.size)
        if modality == "audio":
            audio_seconds += s.meta.codec["n_samples"] / s.meta.codec["sample_rate"]
        elif modality == "image":
            images += 1
    for e in errors:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    return ShardResult(split=split, shard=shard, num_samples=index["num_samples"], num_errors=len(errors),
                       audio_seconds=audio_seconds, images=images, media_tokens=media_tokens, text_tokens=text_tokens,
                       modalities=modalities, error_reasons=reasons, write_seconds=time.perf_counter() - started)
