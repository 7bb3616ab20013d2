import json
import subprocess
import sys

import pytest
import torch

from uti.errors import RuntimeSizeMismatch, TokenSpaceError, TokenSpaceMismatch
from uti.token_space import CodecDescriptor, Range, TokenSpace, diff, require_same


def space_with(*, audio_fp="a" * 64, n_q=2, reserved=5) -> TokenSpace:
    return TokenSpace.build(
        text=CodecDescriptor(modality="text", kind="byte", name="b", weights="none", fingerprint="t" * 64,
                             params={"vocab_size": 256}),
        image=CodecDescriptor(modality="image", kind="vqgan", name="v", weights="random:0", fingerprint="i" * 64,
                              params={"codebook_size": 64, "proc_size": [16, 16], "grid": [4, 4]}),
        audio=CodecDescriptor(modality="audio", kind="encodec", name="e", weights="random:0", fingerprint=audio_fp,
                              params={"n_q": n_q, "codebook_size": 32, "sample_rate": 24000, "frame_rate": 75.0}),
        num_reserved=reserved,
    )


def test_layout_is_contiguous_and_levels_never_share_ids():
    space = space_with()
    assert space.range_names == ["special", "text", "image", "audio.l0", "audio.l1"]
    assert space.range("text").start == space.range("special").end
    assert space.range("audio.l1").start == space.range("audio.l0").end
    assert space.vocab_size == space.range("audio.l1").end
    assert space.modality_of(space.range("audio.l1").start) == "audio"


def _with(space: TokenSpace, mutate) -> dict:
    data = json.loads(space.canonical_json())
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["ranges"][1].update(start=d["ranges"][1]["start"] - 1), "overlapping"),
    (lambda d: d["ranges"][2].update(start=d["ranges"][2]["start"] + 3), "gap"),
    (lambda d: d["specials"].update({"<pad>": 10_000}), "outside the special range"),
    (lambda d: d.update(vocab_size=d["vocab_size"] + 1), "vocab_size"),
    (lambda d: d["specials"].update({"<bos>": 0}), "share ID"),
    (lambda d: d["codecs"]["image"]["params"].update(codebook_size=65), "its codec says"),
    (lambda d: d["codecs"]["audio"]["params"].update(n_q=3), "n_q=3"),
    (lambda d: d.update(version=5), "version 5"),
        (lambda d: d.update(version=True), "version True"),
])
def test_validation_catches_malformed_spaces(mutate, message):
    with pytest.raises(TokenSpaceError, match=message):
        TokenSpace.from_dict(_with(space_with(), mutate))


def test_validate_rejects_size_zero_and_missing_required_specials():
    space = space_with()
    bad = TokenSpace(ranges=(Range(name="special", start=0, size=0),) + space.ranges[1:],
                     specials=space.specials, codecs=space.codecs)
    with pytest.raises(TokenSpaceError, match="size 0"):
        bad.validate()
    specials = dict(space.specials)
    del specials["<boa>"]
    with pytest.raises(TokenSpaceError, match="<boa>"):
        TokenSpace(ranges=space.ranges, specials=specials, codecs=space.codecs).validate()


def test_write_load_round_trip_is_byte_exact(tmp_path):
    space = space_with()
    space.write(tmp_path)
    raw = (tmp_path / "token_space.json").read_bytes()
    assert raw == space.canonical_json()
    assert (tmp_path / "token_space.sha256").read_text().split()[0] == space.id
    loaded = TokenSpace.load(tmp_path)
    assert loaded == space and loaded.canonical_json() == raw and loaded.id == space.id


def test_load_refuses_edited_or_unpaired_files(tmp_path):
    space = space_with()
    space.write(tmp_path)
    pretty = json.dumps(json.loads((tmp_path / "token_space.json").read_text()), indent=2)
    (tmp_path / "token_space.json").write_text(pretty)
    with pytest.raises(TokenSpaceError, match="canonical"):
        TokenSpace.load(tmp_path)
    space.write(tmp_path)
    (tmp_path / "token_space.sha256").write_text("0" * 64 + "  token_space.json\n")
    with pytest.raises(TokenSpaceError, match="records"):
        TokenSpace.load(tmp_path)
    (tmp_path / "token_space.sha256").unlink()
    with pytest.raises(TokenSpaceError, match="travel together"):
        TokenSpace.load(tmp_path)


def test_id_is_stable_across_processes():
    code = ("import sys; sys.path.insert(0, 'tests'); from test_token_space import space_with; "
            "print(space_with().id)")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
           for _ in range(2)}
    assert ids == {space_with().id}


def test_weights_fingerprint_changes_the_id_and_diff_names_it():
    a, b = space_with(), space_with(audio_fp="b" * 64)
    assert a.id != b.id
    changes = diff(a, b)
    assert len(changes) == 1 and changes[0].startswith("codecs.audio.fingerprint: \"aaaa")
    assert changes[0] == f'codecs.audio.fingerprint: "{"a" * 64}" -> "{"b" * 64}"'
    layout = diff(space_with(n_q=2), space_with(n_q=3))
    assert any(c.startswith("ranges.audio.l2: added") for c in layout)
    assert any(c.startswith("codecs.audio.params.n_q") for c in layout)


def test_require_same_names_both_ids_unless_overridden():
    a, b = space_with(), space_with(audio_fp="b" * 64)
    assert require_same(a, a) is None
    with pytest.raises(TokenSpaceMismatch) as info:
        require_same(a, b, what="checkpoint run/ckpt-10")
    msg = str(info.value)
    assert a.id[:16] in msg and b.id[:16] in msg and "codecs.audio.fingerprint" in msg and "run/ckpt-10" in msg
    record = require_same(a, b, override=True)
    assert record["overridden"] and record["expected"] == a.id and record["found"] == b.id


def test_require_same_names_no_flag_unless_its_caller_gives_one():
    """The library cannot know the command: a flag named by default would not exist in most of them."""
    a, b = space_with(), space_with(audio_fp="b" * 64)
    with pytest.raises(TokenSpaceMismatch) as info:
        require_same(a, b)
    assert "override" not in str(info.value) and "--" not in str(info.value).split("changed:")[0]
    with pytest.raises(TokenSpaceMismatch, match="or pass --allow-token-space-mismatch$"):
        require_same(a, b, fix="re-tokenize, or pass --allow-token-space-mismatch")


def test_checkpoint_like_load_with_another_space_fails_unless_overridden(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    other = space_with(audio_fp="c" * 64)
    torch.save({"token_space_json": other.canonical_json().decode(), "weights": torch.zeros(3)}, ckpt)
    state = torch.load(ckpt, weights_only=True)
    found = TokenSpace.from_json_bytes(state["token_space_json"].encode())
    with pytest.raises(TokenSpaceMismatch):
        require_same(space_with(), found, what=str(ckpt))
    assert require_same(space_with(), found, override=True, what=str(ckpt))["overridden"]


def test_check_runtime_raises_on_any_size_difference():
    space = space_with()
    space.check_runtime({"audio": {"n_q": 2, "codebook_size": 32}, "image": {"grid": [4, 4]}})
    with pytest.raises(RuntimeSizeMismatch, match="codebook_size"):
        space.check_runtime({"audio": {"codebook_size": 1024}})
    with pytest.raises(RuntimeSizeMismatch, match="grid"):
        space.check_runtime({"image": {"grid": [8, 8]}})
