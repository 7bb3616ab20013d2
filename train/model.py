"""The causal LM: a tiny built-in Llama config or a local Hugging Face model resized to the token space.

Vocabulary rows: the embedding and LM head have `padded_vocab(space.vocab_size)` rows (a multiple
of 64, like `resize_token_embeddings(pad_to_multiple_of=64)`). Rows >= vocab_size are never inputs,
never targets (logits are cut to the vocab before the loss) and never sampled (generation masks them).

"Text rows" (kept bit-identical by --trainable-rows) are the special and text ranges: IDs below
`text.end`. For a local pretrained model whose tokenizer is the token space's text codec (kind
"hf", same vocab size), the pretrained rows are moved to the text range (text token t lives at ID
text.start + t), so the text rows really are the pretrained ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from train.config import TrainError
from uti.quiet import no_loading_bars
from uti.token_space import TokenSpace

log = logging.getLogger(__name__)

PAD_MULTIPLE = 64
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)


def padded_vocab(vocab_size: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-vocab_size // multiple) * multiple


def text_rows_end(space: TokenSpace) -> int:
    """IDs below this are special + text: the rows --trainable-rows keeps frozen."""
    return space.range("text").end if space.has_range("text") else space.range("special").end


def build_model(spec: str, space: TokenSpace, *, seed: int, seq_len: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`tiny` (a fixed-seed Llama from config) or a local HF causal-LM directory, sized to `space`."""
    if spec == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=padded_vocab(space.vocab_size), max_position_embeddings=max(4096, seq_len),
            tie_word_embeddings=False, rms_norm_eps=1e-5, attention_dropout=0.0,
            pad_token_id=space.special("<pad>"), bos_token_id=space.special("<bos>"), eos_token_id=space.special("<eos>"),
            **TINY,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg)
        return model.float(), {"kind": "tiny", "text_rows": "random init", **TINY}
    return _load_local(spec, space)


def _load_local(path: str, space: TokenSpace) -> tuple[torch.nn.Module, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise TrainError(f"--model {path!r}: not 'tiny' and not a local model directory (no downloads are made; "
                         "save the model with save_pretrained() and pass its folder)")
    try:
        with no_loading_bars():
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainError(f"--model {path}: cannot load a Hugging Face causal LM from it ({exc})") from None
    old_in = model.get_input_embeddings().weight.detach().clone()
    out_emb = model.get_output_embeddings()
    tied = out_emb is None or out_emb.weight is model.get_input_embeddings().weight
    old_out = None if tied else out_emb.weight.detach().clone()
    old_vocab = old_in.shape[0]
    model.resize_token_embeddings(space.vocab_size, pad_to_multiple_of=PAD_MULTIPLE)
    info: dict[str, Any] = {"kind": "local", "path": os.path.abspath(path), "pretrained_vocab": old_vocab}
    warning = vocab_warning(path, space, old_vocab)
    if warning is None:
        text = space.range("text")
        with torch.no_grad():
            model.get_input_embeddings().weight[text.start:text.end] = old_in
            if old_out is not None:
                model.get_output_embeddings().weight[text.start:text.end] = old_out
        info["text_rows"] = f"pretrained rows 0..{old_vocab - 1} moved to IDs {text.start}..{text.end - 1}"
    else:
        info["text_rows"] = "kept by ID (the token space's text codec is not this model's tokenizer)"
        log.warning("%s", warning)
    model.config.pad_token_id = space.special("<pad>")
    model.config.bos_token_id = space.special("<bos>")
    model.config.eos_token_id = space.special("<eos>")
    return model, info


def vocab_warning(model: str, space: TokenSpace, pretrained_vocab: int) -> str | None:
    """None when a pretrained model's rows line up with the token space's text range (its tokenizer
    is the text codec: kind "hf", same size); else the warning that its text knowledge will not."""
    text_codec = space.codecs.get("text")
    size = space.range("text").size if space.has_range("text") else 0
    if text_codec is not None and text_codec.kind == "hf" and size == pretrained_vocab:
        return None
    return (f"--model {model}: its {pretrained_vocab}-row vocabulary is not the token space's text range "
            f"({text_codec.kind if text_codec else 'none'}, {size} IDs); rows are kept by ID, so pretrained text "
            "knowledge does not line up with the text IDs (tokenize with this model's tokenizer as the text codec, "
            "`text: {kind: hf, path: MODEL}`, to line them up)")


def local_model_vocab(path: str) -> int:
    """The vocabulary size a local HF model declares (its config.json only: no weights are read)."""
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise TrainError(f"--model {path}: not 'tiny' and not a local model directory (no downloads are made; "
                         "save the model with save_pretrained() and pass its folder)")
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainError(f"--model {path}: cannot read a Hugging Face model config from it ({exc})") from None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    vocab = getattr(text_cfg, "vocab_size", None)
    if not isinstance(vocab, int):
        raise TrainError(f"--model {path}: its config.json declares no integer vocab_size")
    return vocab


def model_from_checkpoint(ckpt_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Rebuild the architecture from the checkpoint's config.json (no weights downloaded) and load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(ckpt_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    load_model_state(model, state_dict, where=str(Path(ckpt_dir) / "model.pt"))
    return model.eval()


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, where: str) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    # Tied heads are legitimately absent from one side; anything else is a different model.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise TrainError(f"{where}: the weights do not fit this model (missing {missing[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}); resume with the same --model")


class PackedLM(torch.nn.Module):
    """Training view of a causal LM over packed rows: logits only where a target is predicted.

    The LM head (vocab ~10k rows) dominates the cost of a small model; most positions of a packed
    row (prompts, padding) carry no loss, so the head runs on the selected hidden states only.
    Models whose head does more than the output embedding (logit soft-capping) take the plain path.
    No attention mask + per-doc position IDs = block-diagonal causal attention in transformers'
    masking utilities: packed docs do not see each other.
    """

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        self._head_only = getattr(lm.config, "final_logit_softcapping", None) is None

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        if self._head_only:
            hidden = self.lm.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            return self.lm.get_output_embeddings()(hidden[select])
        return self.lm(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[select]


def predict_positions(targets: torch.Tensor) -> torch.Tensor:
    """(B, L) mask of the positions whose logits predict a target (the position before each target)."""
    sel = torch.zeros_like(targets)
    sel[:, :-1] = targets[:, 1:]
    return sel


def token_losses(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                 vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every target token over the real vocab only (padded rows are outside the
    softmax); returns (losses (N,), the (B, L-1) mask of targets[:, 1:] they follow, row-major)."""
    logits = model(input_ids, position_ids, predict_positions(targets))
    mask = targets[:, 1:]
    return F.cross_entropy(logits[:, :vocab_size].float(), input_ids[:, 1:][mask], reduction="none"), mask


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "lm.") -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def row_masked_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The embedding and LM-head matrices (one if tied)."""
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


def freeze_for_trainable_rows(model: torch.nn.Module, *, first_row: int, end_row: int) -> list[torch.nn.Parameter]:
    """Only rows [first_row, end_row) of the embedding/head learn: everything else is frozen and the
    gradient of the frozen rows is zeroed by a hook (exact zeros, so Adam leaves them bit-identical;
    weight decay for these matrices is applied by hand to the trainable rows only, see loop)."""
    rows = row_masked_params(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in rows:
        p.requires_grad_(True)
        mask = torch.zeros(p.shape[0], 1, dtype=torch.bool)
        mask[first_row:end_row] = True
        p.register_hook(lambda g, m=mask: torch.where(m.to(g.device), g, torch.zeros((), dtype=g.dtype, device=g.device)))
    return rows
