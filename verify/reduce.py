"""The reduce: merge per-shard summaries as they arrive, then decide checks 1-11.

Memory is O(samples) small strings (IDs, keys, source hashes: what reconciliation and leakage need)
plus fixed-size histograms; no token array ever reaches the driver.

Attribution rule: each defect fails the check that owns its root cause, not every check it touches.
A tar that no longer matches its index fails `shard_integrity`; the plan is reconciled against the
shard *indexes* (the completion markers), so its samples are not also "missing". A canonical ID
copied into a second split fails `split_integrity`; reconciliation counts that copy but does not
fail on it. Decode, retokenize and the loader only sample shards the scan found clean.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharding.format import sample_key
from sharding.manifest import ManifestError, manifests_sha256, read_manifests
from sharding.outdir import JOB_NAME
from uti.token_space import diff
from verify.checks import ShardSummary
from verify.codec_checks import CodecSummary
from verify.config import VerifyConfig
from verify.dataset import DatasetFiles, ShardTask, manifest_paths
from verify.findings import CHECKS, Check, CheckResult, Finding, FindingLog
from verify.policy import AGREEMENT, EXACT, UNVERIFIABLE, GroupTally, RecordedPolicy
from verify.stats import LengthStats, codebook_metrics


@dataclass
class CleanSample:
    split: str
    shard: str
    key: str
    id: str
    modality: str


@dataclass
class Reduced:
    checks: list[CheckResult]
    stats: dict[str, Any] = field(default_factory=dict)


class Reducer:
    def __init__(self, files: DatasetFiles, cfg: VerifyConfig):
        self.files = files
        self.cfg = cfg
        self.log = FindingLog(cfg.max_examples)
        self.id_splits: dict[str, dict[str, tuple[str, str]]] = {}  # id -> {split: (shard label, key)}
        self.sources: dict[str, dict[str, tuple[str, str, str]]] = {}  # sha -> {split: (label, key, id)}
        self.claims: dict[str, list[tuple[str, str]]] = {}  # id -> [(split, shard name)] from indexes
        self.index_errors: list[tuple[str, str]] = []  # (shard label, id)
        self.clean_samples: list[CleanSample] = []
        self.clean_shards: list[ShardTask] = []
        self.codebooks: dict[str, np.ndarray] = {}
        self.lengths: dict[str, LengthStats] = {}
        self.counts: dict[str, int] = {}
        self.per_shard: dict[str, dict[str, Any]] = {}
        self.disk_shards: set[str] = set()
        self.headers: dict[str, tuple[int | None, dict | None]] = {}  # label -> (header version, encode_policy)

    # ---- intake ------------------------------------------------------------------------------------
    def add(self, task: ShardTask, s: ShardSummary) -> None:
        self.disk_shards.add(task.label)
        self.log.merge(s.findings)
        self.headers[task.label] = (s.header_version, s.encode_policy)
        for id_ in s.index_ids:
            self.claims.setdefault(id_, []).append((s.split, s.name))
        self.index_errors.extend((task.label, e) for e in s.index_error_ids)
        for v in s.samples:
            here = (task.label, v.key)
            splits = self.id_splits.setdefault(v.id, {})
            splits[s.split] = min(splits.get(s.split, here), here)
            if v.source_sha256:
                first = self.sources.setdefault(v.source_sha256, {})
                first[s.split] = min(first.get(s.split, (task.label, v.key, v.id)), (task.label, v.key, v.id))
            if v.clean and s.clean:
                self.clean_samples.append(CleanSample(s.split, s.name, v.key, v.id, v.modality))
        if s.clean:
            self.clean_shards.append(task)
        for level, counts in s.codebooks.items():
            if level in self.codebooks:
                self.codebooks[level] += counts
            else:
                self.codebooks[level] = counts.copy()
        for series, st in s.lengths.items():
            self.lengths.setdefault(series, LengthStats()).merge(st)
        for k, v in s.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.counts["bytes"] = self.counts.get("bytes", 0) + s.tar_bytes
        self.per_shard[task.label] = {
            "shard": task.label, "samples": s.counts.get("samples", 0), "bytes": s.tar_bytes,
            "seconds": round(s.seconds, 4), "failures": {c: n for c, n in s.findings.counts.items() if n},
            "clean": s.clean,
        }

    def add_unscannable(self, task: ShardTask) -> None:
        """A shard without a valid index or without its tar does not exist; say what is left of it."""
        if task.tar_path is not None or task.index_path is not None:
            self.disk_shards.add(task.label)
        self.log.add(Check.SHARD_INTEGRITY, f"not a complete shard ({task.problem})", shard=task.label)
        self.per_shard[task.label] = {"shard": task.label, "samples": 0, "bytes": 0, "seconds": 0.0,
                                      "failures": {Check.SHARD_INTEGRITY: 1}, "clean": False}

    def add_crash(self, task: ShardTask, exc: BaseException) -> None:
        self.disk_shards.add(task.label)
        self.log.add(Check.SHARD_INTEGRITY, f"the scan task failed after retries: {type(exc).__name__}: {exc}",
                     shard=task.label)
        self.per_shard[task.label] = {"shard": task.label, "samples": 0, "bytes": 0, "seconds": 0.0,
                                      "failures": {Check.SHARD_INTEGRITY: 1}, "clean": False}

    def policy_of(self, label: str, modality: str) -> RecordedPolicy | None:
        """The encode policy shard `label`'s header records for `modality` (None: a version 1 header)."""
        version, policy = self.headers.get(label, (None, None))
        return RecordedPolicy.of(version, policy, modality)

    def policy_groups(self) -> list[dict[str, Any]]:
        """The scanned shards grouped by the encode policy their headers record, largest group first
        (report.json `encode_policies`): one line per distinct policy, so a mixed dataset shows."""
        groups: dict[str, dict[str, Any]] = {}
        for label in sorted(self.headers):
            version, policy = self.headers[label]
            key = json.dumps([version, policy], sort_keys=True)
            g = groups.setdefault(key, {"header_version": version, "encode_policy": policy, "shards": 0,
                                        "first_shard": label})
            g["shards"] += 1
        return sorted(groups.values(), key=lambda g: (-g["shards"], g["first_shard"]))

    # ---- dataset-level checks ---------------------------------------------------------------------------
    def _token_space(self) -> None:
        f = self.files
        if f.space_problem:
            self.log.add(Check.TOKEN_SPACE, f.space_problem)
        elif f.space is not None and f.space.id != f.expected.id:
            changes = diff(f.expected, f.space)
            self.log.add(Check.TOKEN_SPACE, f"the dataset's token_space.json is {f.space.id[:16]}, expected "
                                            f"{f.expected.id[:16]} ({f.expected_source}); changed: " + "; ".join(changes[:8]))
        job_id = (f.job or {}).get("token_space_id")
        if job_id is not None and job_id != f.expected.id:
            self.log.add(Check.TOKEN_SPACE,
                         f"job.json records token space {str(job_id)[:16]}, expected {f.expected.id[:16]}")

    def _split_integrity(self) -> None:
        for id_ in sorted(self.id_splits):
            splits = self.id_splits[id_]
            if len(splits) > 1:
                (s0, (l0, _)), *others = sorted(splits.items())
                for split, (label, key) in others:
                    self.log.add(Check.SPLIT_INTEGRITY, f"canonical ID in split {split!r} ({label}) and also in "
                                                        f"{s0!r} ({l0}): leakage", shard=label, key=key, id=id_)
        for sha in sorted(self.sources):
            splits = self.sources[sha]
            if len(splits) > 1:
                (s0, (l0, _, id0)), *others = sorted(splits.items())
                for split, (label, key, id_) in others:
                    if id_ == id0:
                        continue  # the same sample twice: reported above by its canonical ID
                    self.log.add(Check.SPLIT_INTEGRITY,
                                 f"source file SHA-256 {sha[:16]} in split {split!r} (this sample) "
                                                    f"and in {s0!r} ({l0}, {id0!r}): the same media in two splits",
                                 shard=label, key=key, id=id_)

    def _reconcile(self) -> dict[str, Any]:
        f, log = self.files, self.log
        per_split: dict[str, dict[str, int]] = {}
        for problem in f.error_problems:
            log.add(Check.RECONCILIATION, problem)
        if f.plan is None:
            log.add(Check.RECONCILIATION, f.plan_problem or "plan.json missing: nothing to reconcile against")
            return per_split
        planned: dict[str, tuple[str, str]] = {}
        for split, sh in f.plan.shards():
            for id_ in sh.ids:
                planned[id_] = (split, sh.name)
        errors: dict[str, list[dict]] = {}
        for row in f.errors:
            errors.setdefault(row["id"], []).append(row)
        cross_split = 0
        for id_ in sorted(planned):
            split, shard = planned[id_]
            label, key = f"{split}/{shard}", sample_key(id_)
            counts = per_split.setdefault(split, {"planned": 0, "in_shards": 0, "errors": 0, "missing": 0})
            counts["planned"] += 1
            claims = self.claims.get(id_, [])
            same = [c for c in claims if c[0] == split]
            cross_split += len(claims) - len(same) if same else 0
            n_err = len(errors.get(id_, []))
            counts["in_shards"] += min(len(same), 1)
            counts["errors"] += min(n_err, 1)
            where = dict(shard=label, key=key, id=id_)
            if not same and not n_err:
                counts["missing"] += 1
                if claims:
                    log.add(Check.RECONCILIATION, f"planned for {label} but found only in "
                            + ", ".join(f"{s}/{n}" for s, n in claims), **where)
                else:
                    log.add(Check.RECONCILIATION,
                            f"manifest row in no shard and not in errors.jsonl (planned for {label})",
                            **where)
                continue
            if len(same) > 1:
                log.add(Check.RECONCILIATION, f"in {len(same)} shards of split {split!r}: "
                        + ", ".join(f"{s}/{n}" for s, n in same), **where)
            if same and n_err:
                log.add(Check.RECONCILIATION, f"both in shard {same[0][0]}/{same[0][1]} and in errors.jsonl", **where)
            if n_err > 1:
                log.add(Check.RECONCILIATION, f"{n_err} rows in errors.jsonl", **where)
            if len(same) == 1 and same[0][1] != shard:
                log.add(Check.RECONCILIATION, f"in shard {split}/{same[0][1]}, the plan puts it in {label}", **where)
            for row in errors.get(id_, []):
                if row.get("split") not in (None, split):
                    log.add(Check.RECONCILIATION,
                            f"errors.jsonl row says split {row.get('split')!r}, the plan {split!r}",
                            **where)
        for id_ in sorted(set(self.claims) - set(planned)):
            s, n = self.claims[id_][0]
            log.add(Check.RECONCILIATION, "in a shard index but not in plan.json (not a manifest row)",
                    shard=f"{s}/{n}", key=sample_key(id_), id=id_)
        for id_ in sorted(set(errors) - set(planned)):
            log.add(Check.RECONCILIATION, "in errors.jsonl but not in plan.json (not a manifest row)",
                    shard=errors[id_][0].get("shard"), key=sample_key(id_), id=id_)
        for label, id_ in sorted(self.index_errors):
            if id_ not in errors:
                log.add(Check.RECONCILIATION, "listed in the shard index's errors but not in errors.jsonl",
                        shard=label, key=sample_key(id_), id=id_)
        plan_labels = {f"{s}/{sh.name}" for s, sh in f.plan.shards()}
        for label in sorted(self.disk_shards - plan_labels):
            log.add(Check.RECONCILIATION, "shard on disk that plan.json does not have", shard=label)
        self.counts["cross_split_copies"] = cross_split
        self._job_against_plan()
        return per_split

    def _job_against_plan(self) -> None:
        f, log = self.files, self.log
        if f.job is None:
            return
        job = f.job
        if job.get("plan_sha256") not in (None, f.plan_sha256):
            log.add(Check.RECONCILIATION, f"job.json records plan SHA-256 {str(job['plan_sha256'])[:16]}, plan.json "
                                          f"hashes to {str(f.plan_sha256)[:16]}")
        if job.get("manifest_sha256") not in (None, f.plan.manifest_sha256):
            log.add(Check.RECONCILIATION, f"job.json records manifest SHA-256 {str(job['manifest_sha256'])[:16]}, "
                                          f"plan.json {f.plan.manifest_sha256[:16]}")
        paths = [m["path"] for m in manifest_paths(job)]
        if not paths or not all(os.path.isfile(p) for p in paths):
            self.counts["manifests_checked"] = 0  # moved or left behind: nothing to compare, not an error
            return
        sha = manifests_sha256(paths)
        if sha != f.plan.manifest_sha256:
            log.add(Check.RECONCILIATION, f"the manifests listed in job.json now hash to {sha[:16]}, the plan was made "
                                          f"from {f.plan.manifest_sha256[:16]} (edited after tokenizing)")
            return
        try:
            rows = read_manifests(paths)
        except ManifestError as exc:
            log.add(Check.RECONCILIATION, f"the manifests listed in job.json no longer read: {exc}")
            return
        self.counts["manifests_checked"] = len(paths)
        planned = {id_: (split, f"{split}/{sh.name}") for split, sh in f.plan.shards() for id_ in sh.ids}
        rows_by_id = {r.id: r.split for r in rows}
        for id_ in sorted(set(rows_by_id) ^ set(planned)):
            if id_ in rows_by_id:
                log.add(Check.RECONCILIATION, "manifest row not in plan.json", key=sample_key(id_), id=id_)
            else:
                log.add(Check.RECONCILIATION, "plan.json ID not in the manifests", shard=planned[id_][1],
                        key=sample_key(id_), id=id_)
        for id_ in sorted(set(rows_by_id) & set(planned)):
            if rows_by_id[id_] != planned[id_][0]:
                log.add(Check.RECONCILIATION, f"manifest says split {rows_by_id[id_]!r}, plan.json {planned[id_][0]!r}",
                        shard=planned[id_][1], key=sample_key(id_), id=id_)

    # ---- results --------------------------------------------------------------------------------------
    def _result(self, name: str, *, hard: bool | None = None, counts: dict | None = None) -> CheckResult:
        n = self.log.counts.get(name, 0)
        return CheckResult(name=name, ok=n == 0, hard=CHECKS[name][2] if hard is None else hard, failures=n,
                           counts=counts or {}, examples=list(self.log.examples.get(name, [])))

    def finish(self, *, codec: list[CodecSummary], codec_plan: dict[str, Any], loader: dict[str, Any] | None,
               loader_note: str) -> Reduced:
        cfg, f = self.cfg, self.files
        self._token_space()
        self._split_integrity()
        per_split = self._reconcile()
        shards_total = len(self.per_shard)
        samples = self.counts.get("samples", 0)
        checks = [
            self._result(Check.TOKEN_SPACE, counts={"expected": f.expected.id, "source": f.expected_source,
                                                "shards": shards_total, "samples": samples}),
            self._result(Check.TOKEN_RANGES, counts={"samples": samples}),
            self._result(Check.SHAPES, counts={"samples": samples}),
            self._result(Check.SHARD_INTEGRITY, counts={"shards": shards_total, "clean_shards": len(self.clean_shards),
                                                    "bytes": self.counts.get("bytes", 0)}),
            self._result(Check.RECONCILIATION, counts={"per_split": per_split, "errors_jsonl_rows": len(f.errors),
                                                   "cross_split_copies": self.counts.get("cross_split_copies", 0),
                                                   "manifests_checked": self.counts.get("manifests_checked", 0)}),
            self._result(Check.SPLIT_INTEGRITY,
                         counts={"ids": len(self.id_splits), "source_hashes": len(self.sources)}),
        ]
        for temp in f.temp_files:
            checks[3].warnings.append(f"writer leftover {temp.path} ({temp.reason}); a rerun of `uti tokenize` removes it")
        if f.job_problem:
            checks[4].warnings.append(f"{f.job_problem}: the job's record cannot be compared")
        codec_log = FindingLog(cfg.max_examples)
        codec_counts: dict[str, Any] = {}
        for c in codec:
            codec_log.merge(c.findings)
            for k, v in c.counts.items():
                codec_counts[k] = codec_counts.get(k, 0) + v
        overrides = _unique_overrides(codec)
        checks.append(self._codec_check(Check.DECODE,
                                        codec_log, codec_counts, codec_plan, fraction=cfg.decode_fraction))
        groups = _merge_tallies(codec)
        retokenize = self._retokenize_check(codec_log, codec_counts, codec_plan, groups)
        checks.append(retokenize)
        # What the codec tasks really did, not what job.json's device suggested: exact only when every
        # re-encoded group was compared exactly.
        codec_plan = {**codec_plan, "exact_retokenize": retokenize.counts["exact"],
                      "retokenize_mode": retokenize.counts["mode"]}
        for check in (c for c in checks[-2:] if not c.skipped):
            for o in overrides:
                check.warnings.append(f"--allow-token-space-mismatch: ran with a {o['what']} of token space "
                                      f"{o['found'][:12]}, not the dataset's {o['expected'][:12]}")
        # Only the levels of modalities the dataset has samples of: a range no sample uses says nothing.
        codebooks = {level: codebook_metrics(c) for level, c in self.codebooks.items()
                     if self.counts.get(f"{level.split('.')[0]}.samples", 0)}
        checks.append(self._codebook_check(codebooks))
        checks.append(self._lengths_check())
        checks.append(self._loader_check(loader, loader_note))
        stats = {
            "codebooks": codebooks,
            "lengths": {k: v.to_dict() for k, v in sorted(self.lengths.items())},
            "per_split": per_split,
            "per_shard": [self.per_shard[k] for k in sorted(self.per_shard)],
            "counts": dict(self.counts),
            "codec": {"counts": codec_counts, "load_seconds": [round(c.load_seconds, 2) for c in codec],
                      "seconds": [round(c.seconds, 2) for c in codec], **codec_plan},
            "loader": loader or {},
            "overrides": overrides,
            "encode_policies": self.policy_groups(),
        }
        return Reduced(checks=checks, stats=stats)

    def _codec_check(self, name: str, log: FindingLog, counts: dict, plan: dict, *, fraction: float,
                     hard: bool = True) -> CheckResult:
        picked = plan.get(f"{name}_picked", 0)
        mine = {k: v for k, v in counts.items() if k.startswith(f"{name}.")}
        mine.update(population=plan.get("population", 0), picked=picked, fraction=fraction, seed=self.cfg.seed)
        n = log.counts.get(name, 0)
        result = CheckResult(name=name, ok=n == 0, hard=hard, failures=n, counts=mine,
                             examples=list(log.examples.get(name, [])))
        if fraction == 0:
            result.skipped, result.note = True, f"--{name}-fraction 0"
        elif not picked:
            result.skipped, result.note = True, "no clean sample to pick from"
        elif name == Check.DECODE:
            _note_unavailable_decoders(result, mine)
        return result

    def _retokenize_check(self, log: FindingLog, counts: dict, plan: dict, groups: dict[str, GroupTally]) -> CheckResult:
        """Exact groups failed item by item in the codec tasks; an agreement group (other numerics than
        the shard's, or no policy recorded) fails here when its share of equal codes is below
        --cross-device-agreement, as one finding naming its lowest item. The counts and notes say which
        mode ran, so a measured agreement can never be read as an exact pass."""
        threshold = self.cfg.cross_device_agreement
        for key in sorted(groups):
            g = groups[key]
            if g.mode.mode == AGREEMENT and g.agreement is not None and g.agreement < threshold:
                rate, shard, k, id_ = g.worst
                log.add(Check.RETOKENIZE,
                        f"{g.note(threshold)}; lowest item agreement {rate:.2f}", shard=shard, key=k, id=id_)
        result = self._codec_check(Check.RETOKENIZE, log, counts, plan, fraction=self.cfg.retokenize_fraction)
        compared = counts.get("retokenize.tokens_compared", 0)
        if compared:
            result.counts["agreement_rate"] = counts.get("retokenize.tokens_agree", 0) / compared
        used = [groups[k] for k in sorted(groups) if groups[k].items]
        result.counts.update(_retokenize_mode(used, counts, threshold))
        if counts.get("retokenize.source_missing"):
            result.warnings.append(f"{counts['retokenize.source_missing']} sampled source file(s) missing: not compared")
        for g in used:
            if g.mode.mode == AGREEMENT and g.compared_items and (g.agreement or 0) >= threshold:
                result.warnings.append(g.note(threshold))
            elif g.mode.mode == UNVERIFIABLE:
                result.warnings.append(f"{g.unverifiable_items} {g.mode.modality} item(s) not re-encoded: {g.mode.reason}")
        if result.counts["exact"] and not result.skipped:
            sources = {g.mode.source for g in used}
            result.note = ("exact: re-encoded with the numerics the shard headers record" if sources == {"header"} else
                           "exact: re-encoded on the device job.json names (shard headers of version 1 record no "
                           "encode policy)" if sources == {JOB_NAME} else
                           "exact: re-encoded with the numerics the shard headers (or job.json, version 1) record")
        return result

    def _codebook_check(self, codebooks: dict[str, dict]) -> CheckResult:
        low = [lvl for lvl, m in codebooks.items() if m["tokens"] and m["utilization"] < self.cfg.utilization_warn]
        result = CheckResult(name=Check.CODEBOOK_HEALTH, ok=True, hard=False, counts={
            "levels": len(codebooks), "below_threshold": low, "threshold": self.cfg.utilization_warn,
            "utilization": {lvl: round(m["utilization"], 4) for lvl, m in codebooks.items()},
        })
        for lvl in low:
            m = codebooks[lvl]
            result.warnings.append(f"{lvl}: utilization {m['utilization']:.1%} < {self.cfg.utilization_warn:.0%} "
                                   f"({m['dead']} dead codes of {m['codebook_size']}, perplexity {m['perplexity']:.1f})")
        if not codebooks:
            result.note = "no audio or image samples: no codebook to measure"
        else:
            lvl = min(codebooks, key=lambda k: (codebooks[k]["utilization"], k))
            result.note = (f"lowest utilization {lvl} {codebooks[lvl]['utilization']:.1%} of {len(codebooks)} "
                           f"level(s) ({', '.join(sorted({k.split('.')[0] for k in codebooks}))})")
        return result

    def _lengths_check(self) -> CheckResult:
        over = {k.split(".")[0]: v.over_limit for k, v in self.lengths.items() if k.endswith(".sequence")}
        result = self._result(Check.LENGTHS, hard=self.cfg.fail_on_truncation, counts={
            "max_seq_len": self.cfg.max_seq_len, "over_max_seq_len": over,
            "mean": {k: round(v.mean, 2) for k, v in sorted(self.lengths.items())},
            "max": {k: v.max for k, v in sorted(self.lengths.items())},
        })
        if self.cfg.max_seq_len is None:
            result.note = "no --max-seq-len given: histograms only"
        elif not result.ok and not result.hard:
            result.warnings.append(f"{result.failures} sample(s) would not fit --max-seq-len {self.cfg.max_seq_len}")
        return result

    def _loader_check(self, loader: dict[str, Any] | None, note: str) -> CheckResult:
        if loader is None:
            return CheckResult(name=Check.LOADER, ok=True, hard=True, skipped=True, note=note)
        result = CheckResult(name=Check.LOADER,
                             ok=True, hard=True, counts={k: v for k, v in loader.items() if k != "failure"})
        failure = loader.get("failure")
        if failure is None and loader.get("batches", 0) == 0:
            failure = {"shard": None, "key": None, "id": None, "detail": "the reader yielded no batch"}
        if failure is not None:
            result.ok, result.failures = False, 1
            result.examples = [Finding(Check.LOADER, failure.get("shard"), failure.get("key"), failure.get("id"),
                                       failure["detail"])]
        return result


def _note_unavailable_decoders(result: CheckResult, counts: dict) -> None:
    """Items whose codec has no decoder configured were not decoded: the check is skipped when that is
    every picked item, else it passes on the rest with a warning naming how many were left out."""
    missing = {k.split(".")[1]: v for k, v in counts.items() if k.endswith(".unavailable") and v}
    if not missing:
        return
    what = ", ".join(f"{n} {modality}" for modality, n in sorted(missing.items()))
    reason = (f"no decoder configured for {what} item(s) (e.g. SEED's `decoder:` unCLIP pipeline in the "
              "codec config): not decoded")
    if sum(missing.values()) >= counts.get("decode.items", 0) and result.failures == 0:
        result.skipped, result.note = True, reason
    else:
        result.warnings.append(reason)


def _retokenize_mode(used: list[GroupTally], counts: dict, threshold: float) -> dict[str, Any]:
    """The retokenize counts that say how the comparison ran: `mode` (exact, agreement, unverifiable, mixed
    or none), `exact` (true only when something was compared and every policy exactly), the devices and
    one entry per modality and recorded policy."""
    modes = sorted({g.mode.mode for g in used})
    text_only = not used and counts.get("retokenize.text.exact", 0) > 0
    mode = EXACT if text_only else (modes[0] if len(modes) == 1 else ("mixed" if modes else "none"))
    made = sorted({g.mode.tokenized_on for g in used})
    here = sorted({g.mode.re_encoded_on for g in used})
    # Exact means compared exactly: a run whose sampled sources were all missing compared nothing.
    exact = mode == EXACT and (counts.get("retokenize.tokens_compared", 0) > 0 or text_only)
    return {"mode": mode, "exact": exact, "threshold": threshold,
            "devices": {"tokenized_on": made, "re_encoded_on": here, "differ": made != here},
            "policies": [g.to_dict(threshold) for g in used]}


def _merge_tallies(codec: list[CodecSummary]) -> dict[str, GroupTally]:
    """Every task's retokenize tallies, merged per modality and recorded policy (copies: a task's own
    summary is left as it came)."""
    import copy

    merged: dict[str, GroupTally] = {}
    for c in codec:
        for key, tally in c.retokenize.items():
            if key in merged:
                merged[key].merge(tally)
            else:
                merged[key] = copy.deepcopy(tally)
    return merged


def _unique_overrides(codec: list[CodecSummary]) -> list[dict[str, Any]]:
    """The token-space differences the codec tasks accepted (--allow-token-space-mismatch), each once
    (every task loads the same codecs, so they report the same ones)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for c in codec:
        for o in c.overrides:
            seen.setdefault((o["what"], o["expected"], o["found"]), o)
    return [seen[k] for k in sorted(seen)]
