"""The codec actor: loads the codecs once (on its GPU when it has one) and turns the prepared media of one
chunk (a run of a shard's rows) into finished samples; the shard's writer task commits them (ray_jobs.chunks)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from uti.errors import without_object_reprs
from uti.token_space import missing_modality_message

if TYPE_CHECKING:  # types only: the driver imports this module without the media stack
    from ray_jobs.read import ReadResult
    from sharding.manifest import ManifestRow
    from uti.config import UTIConfig

log = logging.getLogger(__name__)


class CodecWorker:
    """Plain class; ray_jobs.job wraps it with ray.remote(...) and the resources of this run."""

    def __init__(self, *, config: UTIConfig, token_space_json: bytes | None, out: str, device: str, threads: int,
                 modalities: tuple[str, ...] = ("audio", "image"), prepare_on: str = "reader"):
        """Every actor loads only the codecs of `modalities` (those the job's rows need). With
        `token_space_json` None this is the job's first actor: its token space, which names every configured
        codec (the others described without loading them, uti.codecs.descriptors), becomes the job's (the
        driver loads none). Every other actor is checked against that space.

        The codecs load on the first call (`load`, which the driver sends at once), not here: an actor whose
        `placed` answers is placed and only loading, so the driver never takes it for one waiting for CPU
        (slow codecs load for minutes). A restarted actor loads again on its first call."""
        self._args = (config, token_space_json, modalities, threads)
        self.prepare_on = prepare_on  # where media are resampled/resized: part of the encode policy it reports
        self.out = out
        self.device = device
        self.tok = None
        self.space = None

    def placed(self) -> dict[str, Any]:
        """Answers as soon as Ray has placed this actor and started its process (before any codec loads)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def load(self) -> None:
        """Load the codecs (once; every other call loads them first if need be)."""
        if self.tok is not None:
            return
        import torch

        from uti.token_space import TokenSpace
        from uti.tokenizer import UnifiedTokenizer

        cfg, token_space_json, modalities, threads = self._args  # the driver's UTIConfig itself (a frozen dataclass)
        torch.set_num_threads(max(1, threads))
        if token_space_json is None:
            tok = UnifiedTokenizer(cfg, device=self.device, modalities=("text", *modalities),
                                   describe=("image", "audio"))
        else:
            space = TokenSpace.from_json_bytes(token_space_json, where="job token space")
            # Loading against the job's token space: a worker whose codecs differ (other weights on this
            # node, another library version) refuses to start instead of writing foreign tokens.
            tok = UnifiedTokenizer(cfg, device=self.device, token_space=space, modalities=("text", *modalities))
        _check_batching(tok)
        self.tok, self.space = tok, tok.space

    def info(self) -> dict[str, Any]:
        import ray

        import torch

        self.load()
        return {"pid": os.getpid(), "device": self.device, "node": ray.get_runtime_context().get_node_id(),
                "token_space_id": self.space.id, "torch": str(torch.__version__),  # a plain str: a TorchVersion unpickles by importing torch
                "codecs": [m for m in ("text", "image", "audio") if getattr(self.tok, m) is not None],
                "encode_policy": self.encode_policy()}

    def encode_policy(self) -> dict[str, dict[str, Any]]:
        """{modality: EncodePolicy.to_dict()} of the loaded media codecs: the numerics of the tokens this
        actor writes (every actor of a job must report the same: ray_jobs.policy)."""
        self.load()
        return {m: codec.encode_policy(prepare_on=self.prepare_on).to_dict()
                for m, codec in (("audio", self.tok.audio), ("image", self.tok.image)) if codec is not None}

    def codec_facts(self) -> dict[str, Any]:
        """What the driver needs from the codecs: the token space and the read tasks' target formats."""
        self.load()
        tok = self.tok
        return {"token_space_json": self.space.canonical_json(),
                "sample_rate": tok.audio.sample_rate if tok.audio else 0,
                "channels": tok.audio.channels if tok.audio else 0,
                "proc_size": tok.image.proc_size[0] if tok.image else 0,
                "encode_policy": self.encode_policy()}

    def encode_chunk(self, *, split: str, shard: str, index: int, rows: list[ManifestRow], media: list,
                     read_args: dict[str, Any] | None = None, token_space_id: str | None = None):
        """One chunk of a shard -> (ChunkStats, EncodedChunk): call with num_returns=2, so the driver reads only
        the small stats and the encoded samples go from the object store straight to the shard's writer.
        `media`: the refs of the chunk's read tasks; or, with `read_args` (ray_jobs.read.read_rows's
        arguments), this actor reads the rows itself (CPU actors: ray_jobs.resources)."""
        import ray

        from ray_jobs.chunks import ChunkStats, EncodedChunk

        self.load()
        if token_space_id is not None and token_space_id != self.space.id:
            # The first actor, restarted by Ray (maybe on another node), built its space anew: it must be the job's.
            raise RuntimeError(f"this actor's codecs give token space {self.space.short_id}, not the job's "
                               f"{token_space_id[:12]}: the codec weights or libraries differ between nodes")

        from sharding.format import build_sample

        started_at = time.time()  # wall clock: the driver spans a modality's chunks across actors
        t0 = time.perf_counter()
        if read_args is not None:
            from ray_jobs.read import read_rows

            items: list[ReadResult] = read_rows(rows, **read_args)
        else:
            items = [item for ref in media for item in ray.get(ref)]
        t1 = time.perf_counter()  # wait: for the read tasks, or the actor's own read
        by_id = {r.id: r for r in rows}
        encoded: dict[str, tuple[np.ndarray, dict, str | None, dict]] = {}
        errors: dict[str, dict] = {}
        t_encode = time.perf_counter()
        self._encode(items, by_id, split, shard, encoded, errors)
        encode_seconds = time.perf_counter() - t_encode
        samples = []
        audio_seconds, images, tokens_out = 0.0, 0, 0
        for row in rows:  # plan order: the shard's bytes never depend on scheduling
            if row.id in errors:
                continue
            tokens, codec_meta, sha, info = encoded[row.id]
            text, lengths = self.tok.encode_captions(row.captions)
            sample = build_sample(row, split=split, token_space_id=self.space.id, tokens=tokens, text=text,
                                  caption_token_lengths=lengths, codec_meta=codec_meta, source_sha256=sha, info=info)
            samples.append(sample)
            tokens_out += int(sample.tokens.size) + int(sample.text.size)
            if row.modality == "audio":
                audio_seconds += codec_meta["n_samples"] / codec_meta["sample_rate"]
            elif row.modality == "image":
                images += 1
        ids = [r.id for r in rows]
        chunk = EncodedChunk(ids=ids, samples=samples, errors=[errors[x] for x in ids if x in errors])
        stats = ChunkStats(split=split, shard=shard, index=index, num_samples=len(samples), num_errors=len(errors),
                           audio_seconds=audio_seconds, images=images, tokens=tokens_out, busy=time.perf_counter() - t1,
                           wait=t1 - t0, pid=os.getpid(), started_at=started_at, finished_at=time.time(),
                           passes=self._chunk_passes(rows, samples, errors, encode_seconds))
        return stats, chunk

    def _chunk_passes(self, rows: list[ManifestRow], samples: list, errors: dict, encode_seconds: float) -> dict:
        """The chunk's forward passes per media modality, from each codec's pass log (ray_jobs.chunks)."""
        from ray_jobs.chunks import chunk_pass_figures

        codecs = {m: c for m, c in (("audio", self.tok.audio), ("image", self.tok.image)) if c is not None}
        modality_of = {r.id: r.modality for r in rows}
        items = dict.fromkeys(codecs, 0)  # what each codec was given: the samples, and the codec's own errors
        for x in [s.id for s in samples] + [e["id"] for e in errors.values() if e["reason"] == "codec_error"]:
            if modality_of[x] in items:
                items[modality_of[x]] += 1
        return chunk_pass_figures({m: c.pass_log.take() for m, c in codecs.items()}, items=items,
                                  batches={m: c.encode_batch for m, c in codecs.items()}, encode_seconds=encode_seconds)

    def _encode(self, items: list[ReadResult], by_id: dict[str, ManifestRow], split: str, shard: str,
                encoded: dict, errors: dict) -> None:
        def fail(item_id: str, stage: str, reason: str, detail: str) -> None:
            errors[item_id] = {"id": item_id, "path": by_id[item_id].path, "split": split, "shard": shard,
                               "stage": stage, "reason": reason, "detail": without_object_reprs(detail)}

        ok: list[ReadResult] = []
        for item in items:
            if item.failure is not None:
                fail(item.id, item.failure.stage, item.failure.reason, item.failure.detail)
            elif by_id[item.id].captions and not self.space.has_modality("text"):
                # Captions need the text range: without it the sample is an error, not a crashed shard.
                fail(item.id, "tokenize", "no_text_range", missing_modality_message(self.space, "text"))
            else:
                ok.append(item)
        for modality, encode in (("audio", self._encode_audio), ("image", self._encode_image)):
            group = [it for it in ok if by_id[it.id].modality == modality]
            for part, data in self._staged(modality, group, by_id, fail):
                self._encode_part(part, data, encode, fail, encoded)
        for it in ok:
            if by_id[it.id].modality == "text":
                encoded[it.id] = (np.zeros(0, np.uint32), {}, None, {})

    @staticmethod
    def _encode_part(part: list[ReadResult], data: list, encode, fail, encoded: dict) -> None:
        """Encode one part's media (its items' `data`, prepared), isolating the sample that breaks the codec."""
        try:
            results = encode(data)
        except Exception:  # noqa: BLE001 - isolate the sample that breaks the codec, keep the rest
            results = []
            for x in data:
                try:
                    results.append(encode([x])[0])
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
        for it, res in zip(part, results):
            if isinstance(res, Exception):
                fail(it.id, "encode", "codec_error", f"{type(res).__name__}: {res}")
            else:
                ids, meta = res
                encoded[it.id] = (ids, meta, it.source_sha256, it.info)

    def _staged(self, modality: str, group: list[ReadResult], by_id: dict[str, ManifestRow], fail):
        """(items, their codec-ready media) parts of one modality's items. Media the read task prepared
        (prepare_on "reader") is one part, as it comes. Raw media (prepare_on "device") is prepared here, on
        this actor's device, in parts of `prepare_group` items, each prepared on a background thread (on a
        GPU: a side CUDA stream) while the caller encodes the one before; a sample that cannot be prepared
        is a per-sample error of stage "prepare"."""
        ready = [it for it in group if it.prepared]
        if ready:
            yield ready, [it.data for it in ready]
        raw = [it for it in group if not it.prepared]
        if not raw:
            return
        codec = getattr(self.tok, modality)
        size = prepare_group(int(getattr(codec, "encode_batch", 1) or 1))
        parts = [raw[a: a + size] for a in range(0, len(raw), size)]
        device = _device_of(codec, self.device)
        for part, prepared in prepared_ahead(parts, lambda p: self._prepare(modality, p, by_id), device=device):
            good = [(it, x) for it, x in zip(part, prepared) if not isinstance(x, Exception)]
            for it, x in zip(part, prepared):
                if isinstance(x, Exception):
                    fail(it.id, getattr(x, "stage", "prepare"), getattr(x, "reason", "prepare_error"), str(x))
            if good:
                yield [it for it, _ in good], [x for _, x in good]

    def _prepare(self, modality: str, part: list[ReadResult], by_id: dict[str, ManifestRow]) -> list:
        """Each raw item of `part` prepared on this actor's device by sharding.media.prepare_loaded (the
        function verify re-prepares with), or its MediaError."""
        from sharding.media import AudioSpec, LoadedMedia, prepare_loaded
        from uti.errors import MediaError

        codec = getattr(self.tok, modality)
        if codec is None:  # no codec for it here: encode refuses each sample (codec_error), as for prepared media
            return [it.data for it in part]
        audio = modality == "audio"
        spec = AudioSpec(sample_rate=codec.sample_rate, channels=codec.channels) if audio else None
        device = _device_of(codec, self.device)
        out: list = []
        for it in part:
            raw = LoadedMedia(data=it.data, source_sha256=it.source_sha256 or "", info=it.info, prepared=False)
            try:
                data = prepare_loaded(by_id[it.id], raw, device=device, spec=spec,
                                      proc_size=None if audio else codec.proc_size[0]).data
            except MediaError as exc:
                out.append(exc)
                continue
            # The image adapters take uint8 numpy (uti.codecs.base.ImageCodec.encode): back to the host.
            out.append(data if audio else data.cpu().numpy())
        return out

    def _encode_audio(self, arrays: list) -> list[tuple[np.ndarray, dict]]:
        import torch

        return self.tok.encode_audios([a if isinstance(a, torch.Tensor) else torch.from_numpy(a) for a in arrays])

    def _encode_image(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        return self.tok.encode_images(arrays)


def prepare_group(encode_batch: int) -> int:
    """Raw items prepared together on the device: about 4 forward passes' worth (at least 8), so a part
    fills its passes while the next one is prepared. Which items share a part never changes a code (the
    codecs' passes have fixed shapes, uti.codecs.batching), only how many passes a chunk takes."""
    return max(8, 4 * encode_batch)


def _device_of(codec: Any, fallback: str):
    import torch

    return torch.device(str(getattr(codec, "device", None) or fallback))


def prepared_ahead(parts: list[list], prepare, *, device) -> Iterator[tuple[list, Any]]:
    """(part, prepare(part)) in order, each part prepared on one background thread while the caller works
    on the part before it: one part ahead, so at most two parts' media are held at once. On a GPU each
    part runs on a side CUDA stream, so its host-to-device copies and kernels overlap the encode's on the
    default stream; on a CPU the thread shares the actor's cores (the same work, interleaved)."""
    import concurrent.futures

    if not parts:
        return
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uti-prepare")
    try:
        future = pool.submit(_prepare_on_stream, prepare, parts[0], device)
        for k, part in enumerate(parts):
            result = future.result()
            if k + 1 < len(parts):
                future = pool.submit(_prepare_on_stream, prepare, parts[k + 1], device)
            yield part, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_on_stream(prepare, part: list, device) -> Any:
    if device.type != "cuda":
        return prepare(part)
    import torch

    stream = torch.cuda.Stream(device=device)
    with torch.cuda.stream(stream):
        out = prepare(part)
    stream.synchronize()  # this thread waits for its part, the encoding one never does
    consumer = torch.cuda.default_stream(device)
    for x in out:
        # Allocated on the side stream, read on the encode's: the allocator must not hand the memory to the
        # next part before the encode's kernels are done with it.
        if isinstance(x, torch.Tensor) and x.is_cuda:
            x.record_stream(consumer)
    return out


def _check_batching(tok: Any) -> None:
    """uti.codecs.batching.self_check of each loaded media codec on this actor's own device: a codec whose
    codes change with the batch an item shares is refused before it encodes anything (BatchDependenceError,
    one line: codec, device, the flag to change; the driver stops the job with it, ray_jobs.policy)."""
    from uti.codecs.batching import BatchDependenceError, self_check

    for modality in ("audio", "image"):
        codec = getattr(tok, modality)
        if codec is None:
            continue
        try:
            self_check(codec)
        except BatchDependenceError as exc:
            raise BatchDependenceError(f"{modality} codec kind {codec.kind!r}: {exc}") from None
        finally:
            codec.pass_log.take()  # the probes' passes are not the job's work
