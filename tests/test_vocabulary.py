"""The shared vocabulary: modality names defined once, in the orders IDs and seeds depend on, and verify's
check names as a StrEnum whose members are the strings report.json uses."""

import json

import numpy as np
import pytest

import sharding.manifest
import train.census
import train.stream
import uti.config
import uti.tokenizer
import verify.checks
from test_token_space import space_with as _space
from uti.errors import TokenSpaceError
from uti.modalities import MEDIA_MODALITIES, MODALITIES, TOKEN_SPACE_ORDER
from uti.token_space import TokenSpace
from verify.dataset import ShardTask
from verify.findings import CHECKS, Check, CheckResult, FindingLog


def test_token_space_order_is_the_order_of_the_id_ranges():
    space = _space()
    media_first_range = [next(r for r in space.range_names if r.split(".")[0] == m) for m in TOKEN_SPACE_ORDER]
    starts = [space.range(name).start for name in media_first_range]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert uti.config.load_config("default").modalities == TOKEN_SPACE_ORDER


def test_every_module_reads_the_one_definition():
    for module in (sharding.manifest, train.census, uti.tokenizer, verify.checks):
        assert module.MODALITIES is MODALITIES, module.__name__
    assert uti.config.MODALITIES is TOKEN_SPACE_ORDER
    assert set(MODALITIES) == set(TOKEN_SPACE_ORDER) and MEDIA_MODALITIES == ("audio", "image")


def test_stream_seed_codes_keep_their_values():
    # The codes seed each stream's shard permutation and buffer draws: a new value would reorder a seeded run.
    assert train.stream._MODALITY_CODE == {"audio": 0, "image": 1, "text": 2}


def test_error_messages_list_the_modalities_in_the_one_order():
    try:
        sharding.manifest.ManifestRow(id="d:1", dataset="d", modality="video", path="x", split="train")
    except sharding.manifest.ManifestError as exc:
        assert "is not one of audio, image, text" in str(exc)
    else:
        raise AssertionError("a video row was accepted")


REPORT_NAMES = ["token_space", "token_ranges", "shapes", "shard_integrity", "reconciliation", "split_integrity",
                "decode", "retokenize", "codebook_health", "lengths", "loader", "baseline"]


def test_check_names_are_the_report_strings_in_report_order():
    assert list(CHECKS) == REPORT_NAMES and [c.value for c in Check] == REPORT_NAMES
    assert [CHECKS[name][0] for name in REPORT_NAMES] == list(range(1, 13))  # a str key finds its member


def test_a_check_member_serializes_as_its_string():
    log = FindingLog(max_examples=2)
    log.add(Check.SHAPES, "bad grid", shard="train/000000")
    log.add("shapes", "bad grid again")
    assert log.counts == {"shapes": 2}
    result = CheckResult(name=Check.SHAPES, ok=False, hard=True, failures=2, examples=log.examples["shapes"])
    as_enum = json.dumps(result.to_dict(), sort_keys=True)
    as_str = json.dumps(CheckResult(name="shapes", ok=False, hard=True, failures=2,
                                    examples=log.examples["shapes"]).to_dict(), sort_keys=True)
    assert as_enum == as_str and '"name": "shapes"' in as_enum
    with pytest.raises(KeyError, match="shapez"):
        log.add("shapez", "a misspelt check name")


def _shape_findings(modality: str, meta: dict, n_tokens: int, n_text: int = 0) -> list[tuple[str, str]]:
    scan = verify.checks._Scan(ShardTask(split="train", name="000000", tar_path=None, index_path=None),
                               verify.checks._Expect(_space()), max_seq_len=None, max_examples=10)
    v = verify.checks._SampleScan(key="k", position=0, meta=meta, tokens=np.zeros(n_tokens, dtype=np.uint32),
                                  text=np.zeros(n_text, dtype=np.uint32), modality=modality)
    scan.shapes(v)
    return [(f.check, f.detail) for f in scan.log.examples.get(Check.SHAPES, [])]


def test_shapes_lists_every_problem_of_a_sample_in_one_finding():
    meta = {"captions": ["a"], "caption_token_lengths": [2], "n_q": 3, "n_frames": 2, "n_samples": 640}
    [(check, detail)] = _shape_findings("audio", meta, n_tokens=6, n_text=1)
    assert check == "shapes"
    assert detail == ("caption_token_lengths sum to 2, text.npy holds 1 IDs; meta n_q=3, the token space's codec "
                      "has 2; 6 tokens, but n_frames*n_q = 2*2 = 4")


def test_shapes_checks_an_image_against_its_grid_and_passes_a_good_one():
    [(_, detail)] = _shape_findings("image", {"proc_size": [16, 16], "grid": [4, 4]}, n_tokens=15)
    assert detail == "15 tokens, but grid 4x4 needs 16"
    assert _shape_findings("image", {"proc_size": [16, 16], "grid": [4, 4]}, n_tokens=16) == []
    assert _shape_findings("audio", {"n_q": 2, "n_frames": 2, "n_samples": 640}, n_tokens=4) == []


def test_a_local_folder_and_an_out_folder_hold_the_same_token_space_pair(tmp_path):
    from sharding import outdir

    space = _space()
    space.write(tmp_path / "local")
    outdir.write_space(str(tmp_path / "out"), space)
    for name in ("token_space.json", "token_space.sha256"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
    assert (tmp_path / "out" / "token_space.sha256").read_bytes() == f"{space.id}  token_space.json\n".encode()
    assert TokenSpace.load(tmp_path / "out") == outdir.load_space(str(tmp_path / "local")) == space
    (tmp_path / "local" / "token_space.sha256").write_bytes(b"\xff" * 8)  # not even UTF-8: refused, named
    with pytest.raises(TokenSpaceError, match=r"token_space.sha256: records .* restore both from the same job"):
        TokenSpace.load(tmp_path / "local")
