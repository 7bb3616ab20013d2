"""`uti demo`: sample data in the real layouts -> manifest -> tokenize -> verify -> train -> generate -> eval.

Every stage is the real library call the matching `uti` command makes, on one local Ray instance
bound to 127.0.0.1. The demo prints how long each stage took and where everything is.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from uti.errors import ConfigError, UTIError


@dataclass(kw_only=True, frozen=True)
class DemoConfig:
    out: str = "demo-out"
    clips: int = 24
    images: int = 24
    steps: int = 200
    seq_len: int = 1024
    num_actors: int = 2
    num_workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("clips", "images", "steps", "seq_len", "num_actors", "num_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo.{name}: must be >= 1, got {getattr(self, name)}")
        if self.clips < 4 or self.images < 4:
            raise ConfigError("demo: use at least 4 clips and 4 images (some go to the validation split)")


# --quick: 20 steps still take the loss well down (9.2 -> about 6) and give the generate stage a model; each
# step is about 1 s of a 2-core machine.
QUICK = {"clips": 8, "images": 8, "steps": 20, "seq_len": 1024}
# LLaVA has no split; naming its hash splits like Clotho's lets one training run see both datasets.
LLAVA_SPLITS = {"development": 0.85, "validation": 0.15}


def verify_failure_message(res) -> str:
    """The demo's one line for a failed `uti verify`: which hard checks failed and where the report is.
    Reads the report's own `failed_hard` list (statuses are "FAIL"/"WARN"/...; matching them by hand
    once listed nothing)."""
    failed = res.report.get("failed_hard") or ["no hard check named; see the report"]
    return f"verify failed ({', '.join(failed)}); see {res.json_path}"


def check_environment() -> None:
    """Stop at once, in one line, on an install the demo cannot run on (a torch/torchaudio pair that does
    not load, a codec package that does not import), instead of failing later inside a Ray actor."""
    from uti.doctor import POINTER, essential_checks

    broken = [c for c in essential_checks() if c.broken]
    if broken:
        first = broken[0]
        raise UTIError(f"this environment cannot run the demo: {first.item}: {first.detail} "
                       f"(fix: {first.fix}); {POINTER}")


def run_demo(cfg: DemoConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    return DemoRun(cfg, say=say).run()


class DemoRun:
    """One `uti demo` run: each stage is a method that makes the library call of the matching command and
    returns its one-line result; `run` times them, prints them and writes OUT/demo.json."""

    STAGES = 7

    def __init__(self, cfg: DemoConfig, *, say: Callable[[str], None] = print):
        self.cfg, self.say = cfg, say
        self.out = Path(cfg.out).resolve()
        self.paths = {name: self.out / name
                      for name in ("data", "manifests", "tokenized", "run", "generated", "eval")}
        self.stages: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        check_environment()  # before the first import of the stack it checks
        import ray

        from uti.ray_local import connect

        self._claim_out()
        total_start = time.perf_counter()
        self._stage("synthesize sample data", self.data)
        self._stage("uti manifest", self.manifests)
        # No runtime env (as `uti train` on its own local instance): with one, Ray starts a new worker for
        # every actor instead of using those it prestarted.
        started = connect(None, num_cpus=max(os.cpu_count() or 1, self.cfg.num_actors + 1))
        try:
            self._stage("uti tokenize", self.tokenize)
            self._stage("uti verify", self.verify)
            self._stage("uti train", self.train)
            self._stage("uti generate", self.generate)
            self._stage("uti eval", self.evaluate)
        finally:
            if started:
                ray.shutdown()
        self.stages.append({"stage": "total", "seconds": time.perf_counter() - total_start, "result": ""})
        summary = {"out": str(self.out), "stages": self.stages,
                   "paths": {k: str(v) for k, v in self.paths.items()}, **self.results}
        (self.out / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary

    def _claim_out(self) -> None:
        out = self.out
        if out.exists() and any(out.iterdir()) and not (out / "demo.json").exists():
            raise UTIError(f"{out} exists and is not a demo folder; pass an empty or new --out")
        out.mkdir(parents=True, exist_ok=True)

    def _stage(self, name: str, fn: Callable[[], str]) -> None:
        self.say(f"[{len(self.stages) + 1}/{self.STAGES}] {name} ...")
        start = time.perf_counter()
        detail = fn()
        seconds = time.perf_counter() - start
        self.stages.append({"stage": name, "seconds": seconds, "result": detail})
        self.say(f"      {detail} ({seconds:.1f} s)")

    def data(self) -> str:
        from demo.data import make_clotho_set, make_llava_set

        cfg, data = self.cfg, self.paths["data"]
        make_clotho_set(data / "clotho", clips=cfg.clips)
        make_llava_set(data / "llava", images=cfg.images)
        return f"{cfg.clips} Clotho-format clips, {cfg.images} LLaVA-format images in {data}"

    def manifests(self) -> str:
        from sharding.manifest import make_manifest

        data, manifests = self.paths["data"], self.paths["manifests"]
        manifests.mkdir(exist_ok=True)
        a = make_manifest("clotho", data / "clotho", manifests / "clotho.jsonl")
        b = make_manifest("llava", data / "llava", manifests / "llava.jsonl", split_fractions=LLAVA_SPLITS)
        return f"{a['rows']} + {b['rows']} rows -> {manifests}"

    def tokenize(self) -> str:
        from ray_jobs.config import TokenizeConfig
        from ray_jobs.job import run_tokenize

        manifests = self.paths["manifests"]
        job = run_tokenize(TokenizeConfig(
            manifests=(str(manifests / "clotho.jsonl"), str(manifests / "llava.jsonl")),
            out=str(self.paths["tokenized"]), num_actors=self.cfg.num_actors, shard_samples=8,
            progress=self.cfg.progress))
        self.results["tokenize"] = job
        c = job["counts"]
        return (f"{c['samples']} samples in {c['shards']['total']} shards, {c['errors']} errors, "
                f"{job['throughput']['tokens_per_second']:,.0f} tokens/s")

    def verify(self) -> str:
        from verify import VerifyConfig, run_verify

        res = run_verify(VerifyConfig(out=str(self.paths["tokenized"]), decode_fraction=0.25,
                                      retokenize_fraction=0.25, max_seq_len=self.cfg.seq_len))
        self.results["verify"] = {"ok": res.ok, "report": str(res.html_path)}
        if not res.ok:
            raise UTIError(verify_failure_message(res))
        return f"all hard checks passed; report {res.html_path}"

    def train(self) -> str:
        from train.config import TrainConfig
        from train.runner import train

        cfg = self.cfg
        res = train(TrainConfig(data=(str(self.paths["tokenized"]),), out=str(self.paths["run"]), steps=cfg.steps,
                                num_workers=cfg.num_workers, seq_len=cfg.seq_len, batch_size=2, split="development",
                                checkpoint_every=max(cfg.steps // 2, 1)))
        losses = [m["loss"] for m in res.metrics if "loss" in m]
        self.results["train"] = {"first_loss": losses[0] if losses else None,
                                 "last_loss": losses[-1] if losses else None, "steps": res.last_step}
        return f"{res.last_step} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}; {self.paths['run'] / 'loss.png'}"

    def generate(self) -> str:
        from train.generate import GenerateConfig, generate

        run, generated = str(self.paths["run"]), self.paths["generated"]
        generated.mkdir(exist_ok=True)
        audio = generate(GenerateConfig(checkpoint=run, out=str(generated / "audio.wav"), mode="audio",
                                        prompt="a rising chirp sweeps upward", max_tokens=75 * 8,
                                        min_tokens=75 * 8 // 2, seed=0))  # at least 0.5 s: a short run ends clips early
        image = generate(GenerateConfig(checkpoint=run, out=str(generated / "image.png"), mode="image",
                                        prompt="a sunny landscape with a horizon and buildings", seed=0))
        return f"{audio.path.name} ({audio.meta['n_samples'] / audio.meta['sample_rate']:.1f} s), {image.path.name} " \
               f"({image.meta['proc_size'][0]}x{image.meta['proc_size'][1]})"

    def evaluate(self) -> str:
        """`uti eval` on the validation split; its verdicts are reported, not enforced: a model of a few
        steps is not expected to use its prompt yet, and the demo shows how that reads."""
        from train.evaluate.config import EvalConfig
        from train.evaluate.generation import GenerationSettings
        from train.evaluate.run import run_eval

        res = run_eval(EvalConfig(checkpoint=str(self.paths["run"]), data=(str(self.paths["tokenized"]),),
                                  split="validation", out=str(self.paths["eval"]), num_workers=self.cfg.num_workers,
                                  generation=GenerationSettings(n_prompts=4, max_tokens=75 * 8)),
                       say=lambda line: None)
        gaps = {t: d["gap"] for t, d in res.report["dependence"].items()}
        self.results["eval"] = {"ok": res.ok, "gaps": gaps, "report": str(res.html_path),
                                "failed": [c["name"] for c in res.report["checks"] if c["verdict"] == "FAIL"]}
        shown = "; ".join(f"{t} conditioning gap {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
                          for t, g in gaps.items() if t in ("t2a", "t2i")) or "no conditioning gap (too few samples)"
        verdict = "every hard check passed" if res.ok else \
            f"failed: {', '.join(self.results['eval']['failed'])} (a {self.cfg.steps}-step model, " \
            f"{res.report['samples']['scored']} validation samples)"
        return f"{shown}; {verdict}; report {res.html_path}"


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", f"{'stage':<24} {'seconds':>8}  result", f"{'-' * 24} {'-' * 8}  {'-' * 6}"]
    for s in summary["stages"]:
        lines.append(f"{s['stage']:<24} {s['seconds']:>8.1f}  {s['result']}")
    p = summary["paths"]
    lines += ["", "where everything is:",
              f"  sample data        {p['data']}  (Clotho and LLaVA-Pretrain layouts)",
              f"  manifests          {p['manifests']}",
              f"  tokenized dataset  {p['tokenized']}  (token_space.json, plan.json, shards/, errors.jsonl, job.json)",
              f"  verify report      {p['tokenized']}/verify/report.html",
              f"  training run       {p['run']}  (checkpoints/, metrics.jsonl, loss.png)",
              f"  generated          {p['generated']}/audio.wav, {p['generated']}/image.png",
              f"  evaluation         {p['eval']}/report.html  (per-task loss, prompt ablation, generation health)",
              "", "next: point `uti manifest` at your own data (README: 'Use your data')."]
    return "\n".join(lines)
