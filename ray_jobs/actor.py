"""The codec actor: loads the codecs once (on its GPU when it has one) and turns a shard's prepared
media into a written shard. A shard is the unit of work: written whole, atomically, or not at all."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from uti.token_space import missing_modality_message

log = logging.getLogger(__name__)


class CodecWorker:
    """Plain class; ray_jobs.job wraps it with ray.remote(...) and the resources of this run."""

    def __init__(self, *, config: dict, token_space_json: bytes | None, out: str, device: str, threads: int,
                 modalities: tuple[str, ...] = ("audio", "image")):
        """With `token_space_json` None this is the job's first actor: it loads every configured codec and
        its token space becomes the job's (the driver loads none). Every other actor loads only the
        codecs of `modalities` and is checked against that space."""
        import torch

        from uti.config import UTIConfig
        from uti.strict import from_dict
        from uti.token_space import TokenSpace
        from uti.tokenizer import UnifiedTokenizer

        torch.set_num_threads(max(1, threads))
        cfg = from_dict(UTIConfig, config)
        if token_space_json is None:
            self.tok = UnifiedTokenizer(cfg, device=device, modalities=("text", "image", "audio"))
        else:
            space = TokenSpace.from_json_bytes(token_space_json, where="job token space")
            # Loading against the job's token space: a worker whose codecs differ (other weights on this
            # node, another library version) refuses to start instead of writing foreign tokens.
            self.tok = UnifiedTokenizer(cfg, device=device, token_space=space, modalities=("text", *modalities))
        self.space = self.tok.space
        self.out = out
        self.device = device

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "device": self.device, "node": ray.get_runtime_context().get_node_id()}

    def codec_facts(self) -> dict[str, Any]:
        """What the driver needs from the codecs: the token space and the read tasks' target formats."""
        tok = self.tok
        return {"token_space_json": self.space.canonical_json(),
                "sample_rate": tok.audio.sample_rate if tok.audio else 0,
                "channels": tok.audio.channels if tok.audio else 0,
                "proc_size": tok.image.proc_size[0] if tok.image else 0}

    def tokenize_shard(self, *, split: str, shard: str, rows: list[dict], chunks: list, extra: dict,
                       token_space_id: str | None = None) -> dict[str, Any]:
        import ray

        if token_space_id is not None and token_space_id != self.space.id:
            # The first actor, restarted by Ray (maybe on another node), built its space anew: it must be the job's.
            raise RuntimeError(f"this actor's codecs give token space {self.space.short_id}, not the job's "
                               f"{token_space_id[:12]}: the codec weights or libraries differ between nodes")

        from sharding.manifest import ManifestRow
        from sharding.media import source_meta  # `source`/`source_ref`: what verify reads the row back from
        from sharding.writer import write_shard

        started = time.perf_counter()
        started_at = time.time()  # wall clock: the driver spans a modality's shards across actors
        busy = wait = 0.0
        by_id = {r["id"]: r for r in rows}
        encoded: dict[str, tuple[np.ndarray, dict, str | None, dict]] = {}
        errors: dict[str, dict] = {}
        for ref in chunks:
            t0 = time.perf_counter()
            items = ray.get(ref)
            t1 = time.perf_counter()
            wait += t1 - t0
            self._encode(items, by_id, split, shard, encoded, errors)
            busy += time.perf_counter() - t1

        t2 = time.perf_counter()
        samples, audio_seconds, images, media_tokens, text_tokens = [], 0.0, 0, 0, 0
        for row in rows:  # plan order: the shard's bytes never depend on scheduling
            if row["id"] in errors:
                continue
            tokens, codec_meta, sha, info = encoded[row["id"]]
            captions = list(row.get("captions") or [])
            caption_ids = [self.tok.encode_text(c) for c in captions]
            text = np.concatenate(caption_ids).astype(np.uint32) if caption_ids else np.zeros(0, np.uint32)
            meta = {
                "id": row["id"], "split": split, "modality": row["modality"], "token_space_id": self.space.id,
                "dataset": row.get("dataset"), **source_meta(ManifestRow.from_dict(row)), "source_sha256": sha,
                "captions": captions, "caption_token_lengths": [int(c.size) for c in caption_ids],
                **codec_meta, **info,
            }
            samples.append({"id": row["id"], "tokens": tokens, "text": text, "meta": meta})
            media_tokens += int(tokens.size)
            text_tokens += int(text.size)
            if row["modality"] == "audio":
                audio_seconds += codec_meta["n_samples"] / codec_meta["sample_rate"]
            elif row["modality"] == "image":
                images += 1
        written = {s["id"] for s in samples}
        if written & set(errors) or written | set(errors) != set(by_id):
            lost = sorted(set(by_id) - written - set(errors))
            raise RuntimeError(f"{split}/{shard}: exactly-once violated before writing (lost {lost[:3]})")
        index = write_shard(self.out, split=split, shard=shard, token_space=self.space, samples=samples,
                            errors=sorted(errors.values(), key=lambda e: e["id"]), extra=extra)
        busy += time.perf_counter() - t2
        return {
            "split": split, "shard": shard, "num_samples": index["num_samples"], "num_errors": len(errors),
            "audio_seconds": audio_seconds, "images": images, "media_tokens": media_tokens, "text_tokens": text_tokens,
            "busy": busy, "wait": wait, "wall": time.perf_counter() - started, "pid": os.getpid(),
            "started_at": started_at, "finished_at": time.time(),
            "modalities": _count_modalities(samples), "error_reasons": _count_reasons(errors.values()),
        }

    def _encode(self, items: list[dict], by_id: dict, split: str, shard: str,
                encoded: dict, errors: dict) -> None:
        def fail(item_id: str, stage: str, reason: str, detail: str) -> None:
            errors[item_id] = {"id": item_id, "path": by_id[item_id].get("path"), "split": split, "shard": shard,
                               "stage": stage, "reason": reason, "detail": detail}

        ok = []
        for item in items:
            if not item["ok"]:
                fail(item["id"], item["stage"], item["reason"], item["detail"])
            elif by_id[item["id"]].get("captions") and not self.space.has_modality("text"):
                # Captions need the text range: without it the sample is an error, not a crashed shard.
                fail(item["id"], "tokenize", "no_text_range", missing_modality_message(self.space, "text"))
            else:
                ok.append(item)
        for modality, encode in (("audio", self._encode_audio), ("image", self._encode_image)):
            group = [it for it in ok if by_id[it["id"]]["modality"] == modality]
            if not group:
                continue
            try:
                results = encode([it["data"] for it in group])
            except Exception:  # noqa: BLE001 - isolate the sample that breaks the codec, keep the rest
                results = []
                for it in group:
                    try:
                        results.append(encode([it["data"]])[0])
                    except Exception as exc:  # noqa: BLE001
                        results.append(exc)
            for it, res in zip(group, results):
                if isinstance(res, Exception):
                    fail(it["id"], "encode", "codec_error", f"{type(res).__name__}: {res}")
                else:
                    ids, meta = res
                    encoded[it["id"]] = (ids, {k: v for k, v in meta.items() if k not in ("modality", "token_space_id")},
                                         it["sha"], it["info"])
        for it in ok:
            if by_id[it["id"]]["modality"] == "text":
                encoded[it["id"]] = (np.zeros(0, np.uint32), {}, None, {})

    def _encode_audio(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        import torch

        return self.tok.encode_audios([torch.from_numpy(a) for a in arrays])

    def _encode_image(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        return self.tok.encode_images(arrays)


def _count_modalities(samples: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["meta"]["modality"]] = counts.get(s["meta"]["modality"], 0) + 1
    return counts


def _count_reasons(errors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in errors:
        counts[e["reason"]] = counts.get(e["reason"], 0) + 1
    return counts
