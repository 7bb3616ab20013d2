"""What the token-space ID covers.

* Everything that changes a codec's output is in the ID, its location is not: a Hugging Face
  tokenizer's whole definition (not its folder name), an image model's architecture config.
* Version-1 token spaces (a tokenizer recorded by its vocabulary only) still load and compare by their own recipe.
* `uti tokenspace build --out` never silently replaces a different token space.
* A config that leaves a modality out gives no range for it, and using that modality is refused clearly.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from cli_helpers import uti_in_process as uti  # `uti ...` through its main() here: no interpreter start each
from uti.config import ImageConfig, TextConfig, UTIConfig, config_from_yaml
from uti.errors import ConfigError, TokenSpaceError, TokenSpaceMismatch
from uti.token_space import SPECIAL_TOKENS, TokenSpace, canonical_json, diff, write_token_space
from uti.tokenizer import UnifiedTokenizer

SENTENCES = ["a dog barks", "A car passes by", "birds sing loudly", "The Dog and the car"]


def make_hf_tokenizer(folder) -> None:
    """A tiny byte-level BPE saved as a transformers fast-tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(special_tokens=["[UNK]"], vocab_size=300))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def hf_config(tmp_path, name: str, tokenizer_dir) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"text: {{kind: hf, path: {json.dumps(str(tokenizer_dir))}}}\n")
    return str(path)


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "my-tokenizer"
    make_hf_tokenizer(folder)
    return folder


# ---- item 1: the ID covers a HF tokenizer's whole definition, not its folder ------------------------
def test_changed_hf_tokenizer_changes_the_id_and_an_unchanged_copy_does_not(tmp_path, hf_tokenizer):
    copy = tmp_path / "elsewhere" / "renamed-copy"
    shutil.copytree(hf_tokenizer, copy)
    changed = tmp_path / "changed" / hf_tokenizer.name  # same folder name: only the content differs
    shutil.copytree(hf_tokenizer, changed)
    edit_json(changed / "tokenizer.json", lambda d: d.update(normalizer={"type": "Lowercase"}))
    edit_json(changed / "tokenizer_config.json", lambda d: d.update(add_prefix_space=True))

    from uti.codecs.text import HFTextCodec

    # The premise: the same text now encodes to other IDs.
    assert HFTextCodec(hf_tokenizer).encode("The Dog") != HFTextCodec(changed).encode("The Dog")

    for name, folder in (("orig", hf_tokenizer), ("copy", copy), ("changed", changed)):
        proc = uti("tokenspace", "build", "--config", hf_config(tmp_path, name, folder), "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
    same = uti("tokenspace", "diff", str(tmp_path / "orig"), str(tmp_path / "copy"))
    assert same.returncode == 0 and same.stdout.startswith("identical"), same.stdout
    different = uti("tokenspace", "diff", str(tmp_path / "orig"), str(tmp_path / "changed"))
    assert different.returncode == 1 and "identical" not in different.stdout
    assert "codecs.text.fingerprint" in different.stdout
    assert "codecs.text.params.components.normalizer" in different.stdout  # names what changed
    assert "codecs.text.params.options.add_prefix_space: added (true)" in different.stdout
    assert TokenSpace.load(tmp_path / "orig").id != TokenSpace.load(tmp_path / "changed").id


def test_every_output_relevant_tokenizer_setting_changes_the_fingerprint(tmp_path, hf_tokenizer):
    from uti.codecs.text import HFTextCodec

    base = HFTextCodec(hf_tokenizer).descriptor()
    edits = {
        "pre_tokenizer": lambda d: d["pre_tokenizer"].update(add_prefix_space=True),
        "merges": lambda d: d["model"].update(merges=d["model"]["merges"][:-1]),
        "added_token": lambda d: d["added_tokens"].append(
            {"id": max(d["model"]["vocab"].values()) + 1, "content": "<x>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}),
    }
    for name, edit in edits.items():
        folder = tmp_path / name / hf_tokenizer.name
        shutil.copytree(hf_tokenizer, folder)
        edit_json(folder / "tokenizer.json", edit)
        assert HFTextCodec(folder).descriptor().fingerprint != base.fingerprint, name
    folder = tmp_path / "class" / hf_tokenizer.name
    shutil.copytree(hf_tokenizer, folder)
    edit_json(folder / "tokenizer_config.json", lambda d: d.update(tokenizer_class="GPT2TokenizerFast"))
    other = HFTextCodec(folder).descriptor()
    assert other.params["tokenizer_class"] != base.params["tokenizer_class"] and other.fingerprint != base.fingerprint


# ---- item 1, audit of the image codec: architecture config in, folder name out ----------------------
def test_vq_architecture_config_is_part_of_the_id_and_its_folder_name_is_not(tmp_path):
    from uti.codecs.vq_image import VQImageCodec, calibration_images

    source = VQImageCodec(ImageConfig())
    source._net.save_pretrained(tmp_path / "vq")
    shutil.copytree(tmp_path / "vq", tmp_path / "copies" / "another-name")
    edited = tmp_path / "edited" / "vq"  # same weights, same folder name, another norm_num_groups
    shutil.copytree(tmp_path / "vq", edited)
    edit_json(edited / "config.json", lambda d: d.update(norm_num_groups=8))

    def load(folder):
        return UnifiedTokenizer(UTIConfig(image=ImageConfig(weights=str(folder))))

    a, copy, b = load(tmp_path / "vq"), load(tmp_path / "copies" / "another-name"), load(edited)
    image = calibration_images(64, 1, seed=5)[0]
    assert not np.array_equal(a.encode_image(image)[0], b.encode_image(image)[0])  # the premise
    assert a.image.fingerprint == b.image.fingerprint  # the weights alone cannot tell them apart
    assert copy.space.id == a.space.id
    assert a.space.id != b.space.id
    assert "codecs.image.params.arch.norm_num_groups: 16 -> 8" in diff(a.space, b.space)


# ---- version-1 token spaces: still read, compared by their own recipe --------------------------------
def _version_1_text_only(hf_dir) -> bytes:
    """The bytes uti wrote before version 2 for `text: {kind: hf, path: ...}` with default reserved slots,
    from that code's recipe: name hf:<folder>, fingerprint over the vocabulary sorted by ID."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    vocab_fp = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]),
                                         ensure_ascii=False).encode()).hexdigest()
    names = list(SPECIAL_TOKENS) + [f"<reserved_{i}>" for i in range(50)]
    data = {
        "codecs": {"text": {"fingerprint": vocab_fp, "kind": "hf", "modality": "text", "name": f"hf:{hf_dir.name}",
                            "params": {"vocab_size": len(tok)}, "weights": "pretrained"}},
        "format": "uti.token_space", "level_order": "frame_major",
        "ranges": [{"name": "special", "size": len(names), "start": 0},
                   {"name": "text", "size": len(tok), "start": len(names)}],
        "specials": {n: i for i, n in enumerate(names)}, "version": 1, "vocab_size": len(names) + len(tok),
    }
    return canonical_json(data)


def test_version_1_token_space_still_loads_and_compares(tmp_path, hf_tokenizer):
    raw = _version_1_text_only(hf_tokenizer)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "token_space.json").write_bytes(raw)
    (old_dir / "token_space.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  token_space.json\n")
    old = TokenSpace.load(old_dir)
    assert old.version == 1 and old.canonical_json() == raw  # read back byte-exact, ID unchanged

    cfg = UTIConfig(text=TextConfig(kind="hf", path=str(hf_tokenizer)))
    tok = UnifiedTokenizer(cfg, token_space=old)  # the same tokenizer matches the version-1 record
    assert tok.space.id == old.id and tok.encode_text("a dog")[0] >= old.range("text").start
    new = UnifiedTokenizer(cfg).space
    assert new.version == 4 and new.id != old.id and "version: 1 -> 4" in diff(old, new)
    other = tmp_path / "other" / hf_tokenizer.name  # another vocabulary: refused even by the version-1 recipe
    shutil.copytree(hf_tokenizer, other)
    edit_json(other / "tokenizer.json", lambda d: d["model"]["vocab"].update({"zzz": len(d["model"]["vocab"])}))
    with pytest.raises(TokenSpaceMismatch, match="codecs.text"):
        UnifiedTokenizer(UTIConfig(text=TextConfig(kind="hf", path=str(other))), token_space=old)
    new.write(tmp_path / "new")
    shown = uti("tokenspace", "diff", str(old_dir), str(tmp_path / "new"))
    assert shown.returncode == 1 and "version: 1 -> 4" in shown.stdout


# ---- item 15: build never silently replaces a different token space ------------------------------------
def test_build_refuses_to_overwrite_a_different_token_space(tmp_path):
    byte_cfg = tmp_path / "byte.yaml"
    byte_cfg.write_text("text: {kind: byte}\n")
    out = tmp_path / "dataset"
    assert uti("tokenspace", "build", "--config", str(byte_cfg), "--out", str(out)).returncode == 0
    before = (out / "token_space.json").read_bytes()
    old_id = TokenSpace.load(out).id

    again = uti("tokenspace", "build", "--config", str(byte_cfg), "--out", str(out))  # the same: a no-op
    assert again.returncode == 0 and "unchanged" in again.stdout

    other_cfg = tmp_path / "other.yaml"
    other_cfg.write_text("text: {kind: byte}\nnum_reserved_specials: 10\n")
    refused = uti("tokenspace", "build", "--config", str(other_cfg), "--out", str(out))
    assert refused.returncode != 0
    assert old_id[:16] in refused.stderr and "--force" in refused.stderr and "refusing to overwrite" in refused.stderr
    assert (out / "token_space.json").read_bytes() == before

    forced = uti("tokenspace", "build", "--config", str(other_cfg), "--out", str(out), "--force")
    assert forced.returncode == 0 and "replaced" in forced.stdout
    new_id = TokenSpace.load(out).id
    assert new_id != old_id and new_id[:16] in refused.stderr and new_id in forced.stdout


def test_write_token_space_refuses_an_unreadable_file_without_force(tmp_path):
    space = UnifiedTokenizer(UTIConfig(text=TextConfig())).space
    (tmp_path / "token_space.json").write_text("{not json")
    with pytest.raises(TokenSpaceError, match="not a readable token space.*--force"):
        write_token_space(space, tmp_path)
    assert write_token_space(space, tmp_path, force=True) == "replaced"
    assert TokenSpace.load(tmp_path).id == space.id


# ---- item 16: an omitted modality has no range ------------------------------------------------------------
def test_config_naming_only_text_has_only_a_text_range(tmp_path):
    cfg_file = tmp_path / "text-only.yaml"
    cfg_file.write_text("text: {kind: byte}\n")
    built = uti("tokenspace", "build", "--config", str(cfg_file), "--out", str(tmp_path / "ts"))
    assert built.returncode == 0, built.stderr
    assert "no image range" in built.stdout and "no audio range" in built.stdout
    space = TokenSpace.load(tmp_path / "ts")
    assert space.range_names == ["special", "text"] and set(space.codecs) == {"text"}
    explicit = config_from_yaml("text: {kind: byte}\nimage: {kind: none}\naudio: {kind: none}\n")
    assert explicit == config_from_yaml(cfg_file.read_text()) and explicit.modalities == ("text",)
    assert UnifiedTokenizer(explicit).space.id == space.id


def test_a_sample_of_a_modality_without_range_is_refused_clearly():
    tok = UnifiedTokenizer(config_from_yaml("text: {kind: byte}\n"))
    assert tok.image is None and tok.audio is None
    with pytest.raises(ConfigError, match=r"no image range.*configure image: in uti.yaml"):
        tok.encode_images([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(ConfigError, match=r"no audio range.*configure audio: in uti.yaml"):
        tok.prepare_audio(np.zeros(100, np.float32), 24000)
    with pytest.raises(ConfigError, match=r"no audio range"):
        tok.decode_audio(np.zeros(8, np.uint32), {"n_frames": 1, "n_samples": 320})
    with pytest.raises(TokenSpaceError, match=r"no image range.*configure image:"):
        tok.space.range("image")
    image_only = UnifiedTokenizer(UTIConfig(image=ImageConfig()))
    with pytest.raises(ConfigError, match=r"no text range.*configure text: in uti.yaml"):
        image_only.encode_text("a caption")
