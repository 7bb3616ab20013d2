"""`uti generate`: constrained sampling from a run's latest checkpoint, decoded through the codec.

Prompts (the first tokens of the training layouts, see train.sequences):

    audio  <bos> <t2a> <bot> PROMPT <eot> <boa>     then audio tokens until <eoa> (at a frame boundary)
    image  <bos> <t2i> <bot> PROMPT <eot> <boi>     then exactly one image's tokens (grid_h * grid_w, or n_tokens)
    text   <bos> <txt> <bot> PROMPT                 then text tokens until <eot>

Every sampled token is drawn from a logits mask (train.generate.Constraint): only the target
modality's range -- at media position i the range the token space's layout gives it
(`TokenSpace.layout(...).range_of_position(i)`: level i % n_q frame-major, SNAC's 1+2+4 codes per
frame, one FSQ level, the image grid), with <eoa> allowed only between whole, decodable frames --
and never a padded row (>= vocab_size). So the output
always has a decodable shape: whole frames for audio, a full grid for images. The codecs are
rebuilt from RUN/codec_config.json (the tokenize job's config) and must match the checkpoint's
token space exactly.

EnCodec 48 kHz decodes per 1 s segment, each with the loudness scale it was normalized by at
encode time. The LM generates the codes, not the scales: generated frames are laid out in the
codec's own segments (the layout training saw: full segments first) and every segment is decoded
with one scale, the median of the training data's (RUN/audio_scale.json, see train.audio_scale), or
`--audio-scale`.

The output's suffix must fit the mode (.wav; .png or .jpg; .txt): bytes of one format under
another's name are refused before anything runs.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from train.audio_scale import read_scale
from train.checkpoint import COMPLETE, checkpoint_space, latest_checkpoint, load_tensors, read_trainer_state
from train.model import model_from_checkpoint, padded_vocab
from train.runner import CODEC_CONFIG
from uti.errors import TokenSpaceError, UTIError
from uti.token_space import TokenSpace, require_same

MODES = ("audio", "image", "text")
DEFAULT_MAX_TOKENS = {"audio": 600, "text": 200}
SUFFIXES = {"audio": (".wav",), "image": (".png", ".jpg", ".jpeg"), "text": (".txt",)}
# Per media mode: the task that trains generating it, and the one that reads it as input only.
GENERATING_TASK = {"audio": "t2a", "image": "t2i"}
READING_TASK = {"audio": "a2t", "image": "i2t"}
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


class GenerateError(UTIError):
    """Generation cannot run (no checkpoint, no codec config, unsupported codec, bad arguments)."""


@dataclass(kw_only=True, frozen=True)
class GenerateConfig:
    checkpoint: str  # a run folder (its latest checkpoint) or one checkpoints/step-NNNNNN folder
    out: str  # .wav (audio), .png/.jpg (image) or .txt (text): SUFFIXES
    mode: str = "audio"
    prompt: str = ""
    max_tokens: int | None = None  # audio: rounded down to whole frames; image: must be >= the grid
    min_tokens: int = 0  # audio: <eoa> may not end the clip before this many tokens (rounded up to whole frames)
    seed: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    audio_scale: float | None = None  # segmented audio codecs: decode scale (default: RUN/audio_scale.json)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise GenerateError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        suffix = Path(self.out).suffix.lower()
        if suffix not in SUFFIXES[self.mode]:
            raise GenerateError(f"--out {self.out}: --mode {self.mode} writes {' or '.join(SUFFIXES[self.mode])} "
                                f"files, not {suffix or 'a name without suffix'}; name the output "
                                f"{Path(self.out).stem or 'out'}{SUFFIXES[self.mode][0]}")
        if self.audio_scale is not None and not self.audio_scale > 0:
            raise GenerateError(f"--audio-scale must be > 0, got {self.audio_scale}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise GenerateError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0 or (self.min_tokens and self.mode != "audio"):
            raise GenerateError(f"--min-tokens {self.min_tokens}: only audio has a minimum length (>= 0)")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise GenerateError(f"--min-tokens {self.min_tokens} is more than --max-tokens {self.max_tokens}")
        if self.temperature < 0 or self.top_k < 0:
            raise GenerateError("--temperature and --top-k must be >= 0")


@dataclass
class GenerationResult:
    mode: str
    path: Path
    tokens: np.ndarray  # uint32 global IDs of the generated media/text (no boundary tokens)
    meta: dict[str, Any]
    checkpoint: Path
    step: int
    warnings: list[str] = field(default_factory=list)  # e.g. a modality the run never trained on (the CLI prints them)


class Constraint:
    """Which IDs may be sampled at each generated position (a bool mask over the padded vocab): the
    range the token space's layout gives the position (`MediaLayout.range_of_position`), so the
    output has the codec's layout whatever it is (frame-major, FSQ, SNAC's multirate frames, grids)."""

    def __init__(self, mode: str, space: TokenSpace, *, max_tokens: int, padded: int,
                 frames_ok: Callable[[int], bool] | None = None, min_tokens: int = 0):
        """frames_ok(n): whether the codec can decode exactly n generated frames (audio may stop only
        there; default: any count). min_tokens: audio may not stop before this many tokens (an
        undertrained model otherwise ends a clip after its first frame)."""
        self.mode = mode
        self.padded = padded
        sp = space.special
        self.stop: int | None = None
        if mode in ("audio", "image"):
            self.layout = space.layout(mode)
            self.tokens_per_frame = self.layout.tokens_per_frame
            self.level_masks = [self._mask([(r.start, r.end)]) for r in self.layout.level_ranges]
        if mode == "audio":
            per = self.tokens_per_frame
            self.frames_ok = frames_ok or (lambda n: True)
            self.max_frames = max_tokens // per
            while self.max_frames >= 1 and not self.frames_ok(self.max_frames):
                self.max_frames -= 1
            if self.max_frames < 1:
                raise GenerateError(f"--max-tokens {max_tokens} is less than one decodable audio frame ({per} tokens "
                                    f"in the {self.layout.kind} layout)")
            self.stop = sp("<eoa>")
            self.length = self.max_frames * per
            self.min_frames = -(-min_tokens // per)  # whole frames, rounded up
        elif mode == "image":
            self.length = image_length(space)
            if max_tokens < self.length:
                raise GenerateError(f"--max-tokens {max_tokens}: an image is exactly {self.length} tokens "
                                    f"({self.layout.kind} {self.layout.shape_meta()}); drop --max-tokens or raise it")
        else:
            r = space.range("text")
            self.stop = sp("<eot>")
            self.length = max_tokens
            self.text_mask = self._mask([(r.start, r.end)], extra=[self.stop])

    @property
    def n_q(self) -> int:
        """Tokens per audio frame (kept for callers of the frame-major era; see tokens_per_frame)."""
        return self.tokens_per_frame

    def _mask(self, spans: list[tuple[int, int]], extra: list[int] = ()) -> torch.Tensor:
        m = torch.zeros(self.padded, dtype=torch.bool)
        for a, b in spans:
            m[a:b] = True
        for i in extra:
            m[i] = True
        return m

    def mask(self, i: int) -> torch.Tensor:
        """Allowed IDs for the i-th generated token (i counts media/text tokens, 0-based)."""
        if self.mode == "text":
            return self.text_mask
        if i >= self.length:
            m = torch.zeros(self.padded, dtype=torch.bool)
        else:
            m = self.level_masks[self.layout.level_of_position(i)]
        frames = i // self.tokens_per_frame if self.mode == "audio" else 0
        if (self.mode == "audio" and i > 0 and self.layout.is_frame_start(i) and frames >= self.min_frames
                and self.frames_ok(frames)):
            m = m.clone()
            m[self.stop] = True  # <eoa> only after whole, decodable frames
        return m

    def finished(self, i: int) -> bool:
        """True when i tokens have been generated and no more may follow."""
        return i >= self.length


def image_length(space: TokenSpace) -> int:
    """Tokens of one image in the token space's layout: grid cells, or a causal1d codec's n_tokens."""
    layout = space.layout("image")
    try:
        return layout.expected_len(layout.shape_meta())
    except TokenSpaceError as exc:
        raise GenerateError(f"token space {space.short_id}: {exc}; generation needs the image codec's fixed "
                            "shape to know when an image is complete") from None


def untrained_modality_warning(trainer_state: dict[str, Any], mode: str) -> str | None:
    """A line when the run never trained the model to generate `mode`, from the sequence counts its
    checkpoint recorded (trainer_state.json "metrics": task_T = sequences of task T built so far, over
    all workers); None when it did, for text (every task trains on captions), or when not recorded."""
    if mode not in GENERATING_TASK:
        return None
    metrics = trainer_state.get("metrics") or {}
    made, read = (metrics.get(f"task_{GENERATING_TASK[mode]}"), metrics.get(f"task_{READING_TASK[mode]}"))
    if not isinstance(made, int) or made > 0:
        return None
    step = trainer_state.get("step")
    if isinstance(read, int) and read > 0:
        return (f"the model never trained to generate {mode}: up to step {step} its run built {read} "
                f"{READING_TASK[mode]} sequences ({mode} as input) and no {GENERATING_TASK[mode]} sequence; "
                f"this {mode} is sampled from untrained output rows")
    return (f"the model never trained on {mode}: up to step {step} its run built no {READING_TASK[mode]} or "
            f"{GENERATING_TASK[mode]} sequence (its data held no {mode}, or --mix left them out); this {mode} is "
            "sampled from untrained output rows")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise GenerateError(f"--checkpoint {path}: no complete checkpoint (checkpoints/step-*/COMPLETE) here; "
                            "train first with `uti train --out RUN`")
    return ckpt


def _run_folder(ckpt: Path) -> Path:
    return ckpt.parent.parent


def load_codecs(ckpt: Path, space: TokenSpace, mode: str, tokenizer: Any = None) -> Any:
    """The UnifiedTokenizer for decoding: given (checked against the checkpoint's token space), or
    rebuilt from RUN/codec_config.json with only the codec the mode needs."""
    if mode == "audio":
        audio = space.codecs.get("audio")
        if audio is None:
            raise GenerateError(f"checkpoint {ckpt}: its token space has no audio codec; use --mode image or text")
    if mode == "image" and "image" not in space.codecs:
        raise GenerateError(f"checkpoint {ckpt}: its token space has no image codec; use --mode audio or text")
    if tokenizer is not None:
        require_same(space, tokenizer.space, what="the given tokenizer")
        return tokenizer
    from uti.config import UTIConfig
    from uti.strict import from_dict
    from uti.tokenizer import UnifiedTokenizer

    cfg_path = _run_folder(ckpt) / CODEC_CONFIG
    if not cfg_path.is_file():
        raise GenerateError(f"{cfg_path}: missing; it is copied from the dataset's OUT/job.json at train time. Copy "
                            "the \"config\" object of the dataset's job.json there to decode")
    config = from_dict(UTIConfig, json.loads(cfg_path.read_text()), where=str(cfg_path))
    modalities = () if mode == "text" else (mode,)
    return UnifiedTokenizer(config, modalities=modalities, token_space=space)


def prompt_ids(mode: str, space: TokenSpace, caption: np.ndarray) -> list[int]:
    sp = space.special
    cap = [int(x) for x in caption]
    if mode == "audio":
        return [sp("<bos>"), sp("<t2a>"), sp("<bot>"), *cap, sp("<eot>"), sp("<boa>")]
    if mode == "image":
        return [sp("<bos>"), sp("<t2i>"), sp("<bot>"), *cap, sp("<eot>"), sp("<boi>")]
    return [sp("<bos>"), sp("<txt>"), sp("<bot>"), *cap]


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: list[int], constraint: Constraint, *, temperature: float, top_k: int,
           seed: int) -> list[int]:
    """Autoregressive sampling with a KV cache; every token is drawn from the constraint's mask."""
    gen = torch.Generator().manual_seed(seed)
    cache_arg = _cache_argument(model)
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    past, logits = _cache_of(out), out.logits[0, -1]
    tokens: list[int] = []
    while not constraint.finished(len(tokens)):
        allowed = constraint.mask(len(tokens))
        lg = torch.full_like(logits, float("-inf"), dtype=torch.float32)
        lg[allowed] = logits[allowed].float()
        if temperature == 0:
            tok = int(torch.argmax(lg))
        else:
            lg = lg / temperature
            if top_k:
                kth = torch.topk(lg, min(top_k, int(allowed.sum()))).values[-1]
                lg = torch.where(lg < kth, torch.full_like(lg, float("-inf")), lg)
            tok = int(torch.multinomial(torch.softmax(lg, dim=-1), 1, generator=gen))
        if not bool(allowed[tok]):  # cannot happen with a -inf mask; a guard against NaN logits
            raise GenerateError(f"sampled ID {tok} outside the allowed set at position {len(tokens)} (NaN logits?)")
        if tok == constraint.stop:
            break
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), use_cache=True, **{cache_arg: past})
        past, logits = _cache_of(out), out.logits[0, -1]
    return tokens


def _cache_argument(model: torch.nn.Module) -> str:
    """The KV-cache keyword of this model's forward: transformers 5 renamed `past_key_values` to
    `cache` (the old name still works but warns on every call); 4.x knows only the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)  # reading .past_key_values on transformers 5 warns too
    return cache if cache is not None else out.past_key_values


def generate(cfg: GenerateConfig, *, tokenizer: Any = None) -> GenerationResult:
    """Sample from the latest checkpoint and write a decodable WAV / PNG / text file (+ FILE.json
    with the tokens and meta). `tokenizer` skips rebuilding the codecs (it must match exactly)."""
    ckpt = resolve_checkpoint(cfg.checkpoint)
    space = checkpoint_space(ckpt)
    state = read_trainer_state(ckpt)
    step = int(state["step"])
    warnings = [w for w in (untrained_modality_warning(state, cfg.mode),) if w]
    tok = load_codecs(ckpt, space, cfg.mode, tokenizer)
    model = load_generator(ckpt, space)
    constraint = constraint_for(cfg.mode, space, tok, padded=model.get_output_embeddings().weight.shape[0],
                                max_tokens=cfg.max_tokens, min_tokens=cfg.min_tokens)
    caption = tok.encode_text(cfg.prompt) if cfg.prompt else np.zeros(0, np.uint32)
    prompt = prompt_ids(cfg.mode, space, caption)
    ids = np.asarray(sample(model, prompt, constraint, temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed),
                     dtype=np.uint32)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "audio":
        scale = (cfg.audio_scale, "--audio-scale") if cfg.audio_scale is not None else read_scale(_run_folder(ckpt))
        wav, meta = decode_generated_audio(tok, space, ids, scale=scale)
        import soundfile as sf

        sf.write(str(out), np.clip(wav.T, -1.0, 1.0), tok.audio.output_sample_rate, format="WAV")
    elif cfg.mode == "image":
        image, meta = decode_generated_image(tok, space, ids)
        from PIL import Image

        Image.fromarray(image).save(out, format=_IMAGE_FORMATS[out.suffix.lower()])
    else:
        meta = {"modality": "text", "token_space_id": space.id}
        out.write_text(tok.decode_text(ids, what="generated text"), encoding="utf-8")
    sidecar = {"mode": cfg.mode, "prompt": cfg.prompt, "checkpoint": str(ckpt), "step": step, "seed": cfg.seed,
               "temperature": cfg.temperature, "top_k": cfg.top_k, "token_space_id": space.id, "meta": meta,
               "tokens": ids.tolist(), "warnings": warnings}
    decode_info = getattr(tok.image, "decode_info", None) if cfg.mode == "image" else None
    if decode_info is not None:  # a diffusion decoder (SEED): its pipeline, steps, guidance and seed made the PNG
        sidecar["decoder"] = decode_info()
    Path(str(out) + ".json").write_text(json.dumps(sidecar, sort_keys=True) + "\n")
    return GenerationResult(mode=cfg.mode, path=out, tokens=ids, meta=meta, checkpoint=ckpt, step=step,
                            warnings=warnings)


def load_generator(ckpt: Path, space: TokenSpace) -> torch.nn.Module:
    """The checkpoint's model, its output rows checked against the token space (padded, never fewer)."""
    model = model_from_checkpoint(ckpt, load_tensors(ckpt / "model.pt"))
    padded = model.get_output_embeddings().weight.shape[0]
    if padded < space.vocab_size or padded != padded_vocab(padded):
        raise GenerateError(f"{ckpt}: the model has {padded} output rows for vocab {space.vocab_size}")
    return model


def constraint_for(mode: str, space: TokenSpace, tok: Any, *, padded: int, max_tokens: int | None,
                   min_tokens: int = 0) -> Constraint:
    """`uti generate`'s constraint for a mode: max_tokens None takes the mode's default (an image: its
    whole grid); audio may stop only at frame counts the codec decodes."""
    limit = max_tokens or DEFAULT_MAX_TOKENS.get(mode, 0)
    if mode == "image" and max_tokens is None:
        limit = image_length(space)
    frames_ok = (lambda n: decodable_frames(tok.audio, n)) if mode == "audio" else None
    return Constraint(mode, space, max_tokens=limit, padded=padded, frames_ok=frames_ok, min_tokens=min_tokens)


def decode_generated_audio(tok: Any, space: TokenSpace, ids: np.ndarray, *,
                           scale: tuple[float, str]) -> tuple[np.ndarray, dict[str, Any]]:
    """(channels, samples) float waveform at the decoder's output rate and the meta it was decoded
    with, for generated audio IDs (whole frames); scale: (value, where it came from) for segmented codecs."""
    per = space.layout("audio").tokens_per_frame
    meta = audio_meta(tok, space, n_frames=len(ids) // per, scale=scale[0])
    if "scales" in meta:
        meta["scale_from"] = scale[1]
    if tok.audio.output_sample_rate != tok.audio.sample_rate:  # the WAV's rate, where the decoder's differs
        meta["output_sample_rate"] = tok.audio.output_sample_rate
    wav = tok.decode_audio(ids, meta, what="generated audio").detach().cpu().numpy()
    return wav, meta


def decode_generated_image(tok: Any, space: TokenSpace, ids: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(H, W, 3) uint8 image and the meta it was decoded with, for one generated image's IDs."""
    meta = {"modality": "image", "proc_size": list(tok.image.proc_size), **space.layout("image").shape_meta(),
            "token_space_id": space.id}
    return tok.decode_image(ids, meta, what="generated image"), meta


def audio_meta(tok: Any, space: TokenSpace, *, n_frames: int, scale: float) -> dict[str, Any]:
    """The meta decode needs for `n_frames` generated frames: the longest clip the codec encodes to
    exactly that many frames; for segmented codecs (EnCodec 48 kHz) also its segments' frame counts
    and one decode scale per segment (`scale`, see train.audio_scale)."""
    codec = tok.audio
    n_samples = samples_for_frames(codec, n_frames)
    meta = {"modality": "audio", "sample_rate": codec.sample_rate, "channels": codec.channels,
            "n_samples": n_samples, "n_frames": n_frames, "n_q": codec.n_q, "frame_rate": codec.frame_rate,
            "token_space_id": space.id}
    layout = segment_frames(codec, n_samples)
    if layout is not None:
        meta["segment_frames"] = layout
        meta["scales"] = [float(scale)] * len(layout)
    return meta


def segment_frames(codec: Any, n_samples: int) -> list[int] | None:
    """Frames per segment of a clip of n_samples for codecs that encode in overlapping segments
    (EnCodec 48 kHz: 1 s segments every 0.99 s), None for whole-clip codecs."""
    seg, stride = getattr(codec, "segment_length", None), getattr(codec, "segment_stride", None)
    if seg is None:
        return None
    return [-(-min(seg, n_samples - off) // codec.hop_length) for off in range(0, n_samples, stride)]


def decodable_frames(codec: Any, n_frames: int) -> bool:
    """Whether n_frames generated frames decode: some clip length must encode to exactly that many (a
    codec that pads clips to a unit of several frames skips the counts in between), and EnCodec's
    overlap-add sizes its output by the last segment, so every earlier segment's decoded samples
    must end within it: a last segment of one frame after a full one (n_frames = 151, 301, ...) does
    not fit. Generation never stops at such a count."""
    try:
        n_samples = samples_for_frames(codec, n_frames)
    except GenerateError:  # e.g. SNAC 32/44 kHz pads clips to 4 frames: 5 frames is no clip's encoding
        return False
    layout = segment_frames(codec, n_samples)
    if layout is None:
        return True
    hop, stride = codec.hop_length, codec.segment_stride
    total = stride * (len(layout) - 1) + layout[-1] * hop
    return all(i * stride + frames * hop <= total for i, frames in enumerate(layout))


def samples_for_frames(codec: Any, n_frames: int) -> int:
    """The largest sample count the codec encodes to exactly n_frames (frames grow by at most one per
    added sample and never shrink, so a binary search finds it): n_frames * hop for whole-clip
    codecs; for overlapping segments the layout training sees, full segments then the rest."""
    lo, hi = 1, (n_frames + 1) * codec.hop_length * 2 + (getattr(codec, "segment_length", None) or 0)
    while lo < hi:  # largest n with expected_frames(n) <= n_frames
        mid = (lo + hi + 1) // 2
        if codec.expected_frames(mid) <= n_frames:
            lo = mid
        else:
            hi = mid - 1
    if codec.expected_frames(lo) != n_frames:
        name = getattr(codec, "name", "the audio codec")
        raise GenerateError(f"no clip length encodes to exactly {n_frames} frames with {name}")
    return lo
