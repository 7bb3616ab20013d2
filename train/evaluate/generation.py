"""Generation health for `t2a` / `t2i`: N prompts from a split of a tokenized dataset, generated through
`uti generate`'s constrained sampler (train.generate: Constraint, sample, prompt_ids) and decoded with the
run's codecs, then measured:

  * decode failures (each recorded with its prompt and error, never raised: the rate is the verdict);
  * the written file against the token space: audio at the decoder's output rate
    (`output_sample_rate`, which the token space records where it differs from the encode rate) with
    `decoded_samples(n_samples)` samples (within one output frame, decode's own tolerance) and the
    token space's channels; an image at the token space's proc_size;
  * generated frames per sample against the split's (quantiles);
  * diversity: distinct codes per level (the token space layout's `level_codes`) and the share of
    repeated frame n-grams (n=4 by default; an image's frame is one grid cell).

The prompts are the captions' token IDs as the data holds them (the first caption of each sample), so
the model is prompted with exactly what it trained on, not a re-encoding of the caption text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from train.audio_scale import read_scale
from train.checkpoint import checkpoint_space
from train.evaluate.memorization import iter_split_samples
from train.generate import (
    GENERATING_TASK, constraint_for, decode_generated_audio, decode_generated_image, load_codecs, load_generator,
    prompt_ids, resolve_checkpoint, sample,
)
from train.runner import load_input_space
from train.sequences import split_captions
from uti.errors import UTIError
from uti.token_space import TokenSpace, require_same

TASK_MODE = {task: mode for mode, task in GENERATING_TASK.items()}  # t2a -> audio, t2i -> image
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
SUFFIX = {"audio": ".wav", "image": ".png"}


class GenerationHealthError(UTIError):
    """Generation health cannot run (no prompts in the split, a token space that differs, bad settings)."""


@dataclass(frozen=True)
class GenerationSettings:
    n_prompts: int = 16
    seed: int = 0  # picks the prompts; prompt i samples with seed + i
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    max_tokens: int | None = None  # audio default: the split's longest sample (rounded to frames); image: its grid
    min_tokens: int = 0
    ngram: int = 4  # frames per n-gram for the repeated-n-gram share
    audio_scale: float | None = None  # segmented codecs; default RUN/audio_scale.json as `uti generate`

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.ngram < 1:
            raise GenerationHealthError(f"generation n_prompts and ngram must be >= 1, got {self.n_prompts}, "
                                        f"{self.ngram}")
        if self.temperature < 0 or self.top_k < 0 or self.min_tokens < 0:
            raise GenerationHealthError("generation temperature, top_k and min_tokens must be >= 0")


@dataclass(frozen=True, eq=False)
class Prompt:
    sample_id: str
    caption: str
    caption_ids: np.ndarray  # the caption's text IDs as the data holds them


@dataclass(frozen=True)
class SplitMedia:
    """What a split holds of one modality: the samples that can prompt (a caption) and frames per sample."""

    prompts: list[Prompt]
    frames: list[int]


@dataclass(frozen=True)
class MediaCheck:
    """A written file against what the token space says it must be."""

    ok: bool
    expected: dict[str, Any]
    found: dict[str, Any]
    problems: list[str]


@dataclass(frozen=True, eq=False)
class Generation:
    task: str
    prompt: Prompt
    seed: int
    tokens: np.ndarray  # uint32 media IDs (no boundary tokens)
    n_frames: int
    path: Path | None  # the decoded WAV/PNG (None: decode failed)
    check: MediaCheck | None
    error: str | None  # the decode failure


@dataclass(frozen=True)
class DecodeFailure:
    sample_id: str
    caption: str
    error: str


@dataclass(frozen=True)
class LengthDistribution:
    """Frames per sample, generated against the split's, at QUANTILES."""

    quantiles: tuple[float, ...]
    generated: list[float]
    data: list[float]
    generated_mean: float
    data_mean: float


@dataclass(frozen=True)
class Diversity:
    distinct_per_level: list[int]  # distinct codes each level used, over all generations
    codebook_per_level: list[int]
    ngram: int
    repeated_ngram_share: list[float]  # per generation
    mean_repeated_ngram_share: float


@dataclass(frozen=True)
class TaskHealth:
    task: str
    generations: list[Generation]
    failures: list[DecodeFailure]
    failure_rate: float
    check_failures: list[str]  # "SAMPLE_ID: problem" for files that decoded but are not what the token space says
    length: LengthDistribution
    diversity: Diversity
    out_dir: Path

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers and verdict inputs (no token arrays): what a report shows."""
        return {"task": self.task, "n": len(self.generations), "failure_rate": self.failure_rate,
                "failures": [dataclasses.asdict(f) for f in self.failures], "check_failures": list(self.check_failures),
                "length": dataclasses.asdict(self.length), "diversity": dataclasses.asdict(self.diversity),
                "files": [{"sample_id": g.prompt.sample_id, "caption": g.prompt.caption, "seed": g.seed,
                           "n_frames": g.n_frames, "path": str(g.path) if g.path else None} for g in self.generations]}


# ---- reading the split ------------------------------------------------------------------------------------------
def read_split_media(out: str, split: str, space: TokenSpace, modality: str) -> SplitMedia:
    """Every `modality` sample of the split: frames per sample, and the ones with a caption as prompts."""
    layout = space.layout(modality)
    prompts: list[Prompt] = []
    frames: list[int] = []
    for s in iter_split_samples(out, split, space, modality):
        frames.append(len(s.tokens) // layout.tokens_per_frame)
        sid = str(s.meta.get("id", s.key))
        caps = split_captions(s.text, s.meta.get("caption_token_lengths", []), what=f"{s.shard} sample {sid}")
        first = next((k for k, c in enumerate(caps) if len(c)), None)
        if first is not None:
            prompts.append(Prompt(sample_id=sid, caption=str((s.meta.get("captions") or [""] * len(caps))[first]),
                                  caption_ids=caps[first]))
    if not prompts:
        raise GenerationHealthError(f"{out}: split {split!r} has no captioned {modality} sample to prompt "
                                    f"{GENERATING_TASK[modality]} with; give a split that holds {modality}")
    return SplitMedia(prompts=prompts, frames=frames)


def choose_prompts(media: SplitMedia, n: int, seed: int) -> list[Prompt]:
    """n prompts (all of them when the split has fewer), a seeded choice in the split's order."""
    pick = np.random.default_rng(seed).choice(len(media.prompts), size=min(n, len(media.prompts)), replace=False)
    return [media.prompts[i] for i in sorted(pick.tolist())]


# ---- measures -------------------------------------------------------------------------------------------------
def expected_audio(space: TokenSpace, codec: Any, n_samples: int) -> dict[str, Any]:
    """What a decoded clip of n_samples (encode-rate samples) must be: the rate the token space records for
    the decoder (output_sample_rate, else sample_rate), decoded_samples(n) samples, one output frame of slack."""
    params = space.codecs["audio"].params
    return {"sample_rate": int(params.get("output_sample_rate", params["sample_rate"])),
            "channels": int(params["channels"]), "samples": int(codec.decoded_samples(n_samples)),
            "tolerance": int(codec.output_hop_length)}


def check_audio_file(path: Path, expected: dict[str, Any]) -> MediaCheck:
    """The WAV as written (read back) against `expected_audio`."""
    import soundfile as sf

    info = sf.info(str(path))
    found = {"sample_rate": int(info.samplerate), "channels": int(info.channels), "samples": int(info.frames)}
    problems = []
    if found["sample_rate"] != expected["sample_rate"]:
        problems.append(f"{path.name}: written at {found['sample_rate']} Hz, the token space's decoder writes "
                        f"{expected['sample_rate']} Hz")
    if found["channels"] != expected["channels"]:
        problems.append(f"{path.name}: {found['channels']} channel(s), the token space has {expected['channels']}")
    if abs(found["samples"] - expected["samples"]) > expected["tolerance"]:
        problems.append(f"{path.name}: {found['samples']} samples, the frames decode to {expected['samples']} "
                        f"(+-{expected['tolerance']})")
    return MediaCheck(ok=not problems, expected=expected, found=found, problems=problems)


def check_image_file(path: Path, space: TokenSpace) -> MediaCheck:
    """The PNG as written (read back) against the token space's proc_size ([height, width])."""
    from PIL import Image

    want = [int(v) for v in space.codecs["image"].params["proc_size"]]
    with Image.open(path) as im:
        found = {"proc_size": [im.height, im.width], "mode": im.mode}
    problems = [] if found["proc_size"] == want else [f"{path.name}: {found['proc_size'][0]}x{found['proc_size'][1]}, "
                                                      f"the token space's images are {want[0]}x{want[1]}"]
    return MediaCheck(ok=not problems, expected={"proc_size": want}, found=found, problems=problems)


def repeated_ngram_share(frames: np.ndarray, n: int = 4) -> float:
    """Share of the n-frame windows (frames: (n_frames, tokens_per_frame)) that already occurred earlier in
    the same sequence; 0 for fewer than n + 1 frames."""
    frames = np.asarray(frames).reshape(len(frames), -1)
    windows = len(frames) - n + 1
    if windows < 2:
        return 0.0
    seen: set[bytes] = set()
    repeats = 0
    for i in range(windows):
        key = np.ascontiguousarray(frames[i:i + n]).tobytes()
        repeats += key in seen
        seen.add(key)
    return repeats / windows


def diversity(space: TokenSpace, modality: str, token_lists: Sequence[np.ndarray], n: int) -> Diversity:
    layout = space.layout(modality)
    levels = len(layout.level_ranges)
    distinct: list[set[int]] = [set() for _ in range(levels)]
    shares = []
    for ids in token_lists:
        if not len(ids):
            shares.append(0.0)
            continue
        for k, codes in enumerate(layout.level_codes(ids)):
            distinct[k].update(codes.tolist())
        shares.append(repeated_ngram_share(layout.to_codes(ids), n))
    return Diversity(distinct_per_level=[len(d) for d in distinct],
                     codebook_per_level=[r.size for r in layout.level_ranges], ngram=n, repeated_ngram_share=shares,
                     mean_repeated_ngram_share=float(np.mean(shares)) if shares else 0.0)


def length_distribution(generated: Sequence[int], data: Sequence[int]) -> LengthDistribution:
    def q(v: Sequence[int]) -> list[float]:
        return [float(x) for x in np.quantile(np.asarray(v, dtype=np.float64), QUANTILES)] if len(v) else []

    return LengthDistribution(quantiles=QUANTILES, generated=q(generated), data=q(data),
                              generated_mean=float(np.mean(generated)) if len(generated) else 0.0,
                              data_mean=float(np.mean(data)) if len(data) else 0.0)


# ---- generating -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Generator:
    """A checkpoint loaded once for every prompt: its model, token space and codecs per mode."""

    ckpt: Path
    space: TokenSpace
    model: torch.nn.Module
    tokenizers: dict[str, Any]

    @classmethod
    def load(cls, checkpoint: str | Path, modes: Sequence[str], tokenizer: Any = None) -> "Generator":
        ckpt = resolve_checkpoint(checkpoint)
        space = checkpoint_space(ckpt)
        model = load_generator(ckpt, space).eval()
        return cls(ckpt=ckpt, space=space, model=model,
                   tokenizers={m: load_codecs(ckpt, space, m, tokenizer) for m in modes})

    @property
    def run(self) -> Path:
        """The run folder (RUN/checkpoints/step-N/..): where audio_scale.json and codec_config.json are."""
        return self.ckpt.parent.parent

    @property
    def padded(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])


def decode_and_check(tok: Any, space: TokenSpace, mode: str, ids: np.ndarray, path: Path,
                     scale: tuple[float, str]) -> MediaCheck:
    """Decode generated IDs as `uti generate` does, write the WAV/PNG and check the file it wrote."""
    if mode == "audio":
        import soundfile as sf

        wav, meta = decode_generated_audio(tok, space, ids, scale=scale)
        sf.write(str(path), np.clip(wav.T, -1.0, 1.0), tok.audio.output_sample_rate, format="WAV")
        return check_audio_file(path, expected_audio(space, tok.audio, int(meta["n_samples"])))
    from PIL import Image

    image, _ = decode_generated_image(tok, space, ids)
    Image.fromarray(image).save(path, format="PNG")
    return check_image_file(path, space)


def decode_outcome(tok: Any, space: TokenSpace, mode: str, ids: np.ndarray, path: Path,
                   scale: tuple[float, str]) -> tuple[MediaCheck | None, str | None]:
    """decode_and_check, with a failure returned as its error line instead of raised: the failure rate is
    the verdict, and one bad generation must not hide the others. A partial file is removed."""
    try:
        return decode_and_check(tok, space, mode, ids, path, scale), None
    except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome, recorded with its prompt
        path.unlink(missing_ok=True)
        return None, f"{type(exc).__name__}: {exc}"


def generate_for(gen: Generator, task: str, prompt: Prompt, *, seed: int, settings: GenerationSettings,
                 max_tokens: int | None, out_dir: Path, index: int, scale: tuple[float, str]) -> Generation:
    """One prompt through the constrained sampler, decoded into out_dir; a decode error is recorded."""
    mode = TASK_MODE[task]
    constraint = constraint_for(mode, gen.space, gen.tokenizers[mode], padded=gen.padded, max_tokens=max_tokens,
                                min_tokens=settings.min_tokens)
    ids = np.asarray(sample(gen.model, prompt_ids(mode, gen.space, prompt.caption_ids), constraint,
                            temperature=settings.temperature, top_k=settings.top_k, seed=seed), dtype=np.uint32)
    path = out_dir / f"{task}-{index:03d}{SUFFIX[mode]}"
    check, error = decode_outcome(gen.tokenizers[mode], gen.space, mode, ids, path, scale)
    return Generation(task=task, prompt=prompt, seed=seed, tokens=ids, n_frames=len(ids) // constraint.tokens_per_frame,
                      path=None if error else path, check=check, error=error)


def _audio_max_tokens(space: TokenSpace, media: SplitMedia, settings: GenerationSettings) -> int | None:
    if settings.max_tokens is not None:
        return settings.max_tokens
    return max(media.frames) * space.layout("audio").tokens_per_frame if media.frames else None


@dataclass(frozen=True, eq=False)
class GenerationPlan:
    """What every share of one task's generation needs: the prompts (index i samples with seed + i), the
    token limit, the loudness scale for segmented codecs, and the split's frames per sample."""

    task: str
    prompts: list[Prompt]
    data_frames: list[int]
    max_tokens: int | None
    scale: tuple[float, str]


def plan_generation(space: TokenSpace, run: Path, data: str, split: str, task: str,
                    settings: GenerationSettings = GenerationSettings()) -> GenerationPlan:
    """The seeded prompts of `task` (t2a or t2i) from the split's captions, and the limits they sample under."""
    if task not in TASK_MODE:
        raise GenerationHealthError(f"generation health is for {' and '.join(TASK_MODE)}, not {task!r}")
    mode = TASK_MODE[task]
    media = read_split_media(data, split, space, mode)
    scale = (settings.audio_scale, "audio_scale") if settings.audio_scale is not None else read_scale(run)
    max_tokens = _audio_max_tokens(space, media, settings) if mode == "audio" else settings.max_tokens
    return GenerationPlan(task=task, prompts=choose_prompts(media, settings.n_prompts, settings.seed),
                          data_frames=media.frames, max_tokens=max_tokens, scale=scale)


def generate_share(gen: Generator, plan: GenerationPlan, out_dir: str | Path, settings: GenerationSettings, *,
                   index: int = 0, count: int = 1) -> list[Generation]:
    """The plan's prompts i with i % count == index, generated and decoded into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [generate_for(gen, plan.task, p, seed=settings.seed + i, settings=settings, max_tokens=plan.max_tokens,
                         out_dir=out, index=i, scale=plan.scale)
            for i, p in enumerate(plan.prompts) if i % count == index]


def task_health(plan: GenerationPlan, gens: Sequence[Generation], space: TokenSpace, settings: GenerationSettings,
                out_dir: str | Path) -> TaskHealth:
    """The measures over every share's generations (in prompt order)."""
    failures = [DecodeFailure(sample_id=g.prompt.sample_id, caption=g.prompt.caption, error=g.error)
                for g in gens if g.error is not None]
    checks = [f"{g.prompt.sample_id}: {p}" for g in gens if g.check is not None for p in g.check.problems]
    return TaskHealth(task=plan.task, generations=list(gens), failures=failures,
                      failure_rate=len(failures) / len(gens) if gens else 0.0, check_failures=checks,
                      length=length_distribution([g.n_frames for g in gens], plan.data_frames),
                      diversity=diversity(space, TASK_MODE[plan.task], [g.tokens for g in gens], settings.ngram),
                      out_dir=Path(out_dir))


def generation_health(gen: Generator, data: str, split: str, task: str, out_dir: str | Path,
                      settings: GenerationSettings = GenerationSettings()) -> TaskHealth:
    """Generate settings.n_prompts samples of `task` (t2a or t2i) prompted by the split's captions, write
    them under out_dir and measure them (see the module doc), in this process."""
    require_same(gen.space, load_input_space(data), what=f"--data {data} (checkpoint {gen.ckpt})")
    plan = plan_generation(gen.space, gen.run, data, split, task, settings)
    return task_health(plan, generate_share(gen, plan, out_dir, settings), gen.space, settings, out_dir)
