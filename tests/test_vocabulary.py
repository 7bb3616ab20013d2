"""The shared vocabulary: modality names defined once, in the orders IDs and seeds depend on, and verify's
check names as a StrEnum whose members are the strings report.json uses."""

import json

import pytest

import sharding.manifest
import train.census
import train.stream
import uti.config
import uti.tokenizer
import verify.checks
from verify.findings import CHECKS, Check, CheckResult, FindingLog
from uti.modalities import MEDIA_MODALITIES, MODALITIES, TOKEN_SPACE_ORDER
from uti.token_space import CodecDescriptor, TokenSpace


def _space() -> TokenSpace:
    return TokenSpace.build(
        text=CodecDescriptor(modality="text", kind="byte", name="b", weights="none", fingerprint="t" * 64,
                             params={"vocab_size": 256}),
        image=CodecDescriptor(modality="image", kind="vqgan", name="v", weights="random:0", fingerprint="i" * 64,
                              params={"codebook_size": 64, "proc_size": [16, 16], "grid": [4, 4]}),
        audio=CodecDescriptor(modality="audio", kind="encodec", name="e", weights="random:0", fingerprint="a" * 64,
                              params={"n_q": 2, "codebook_size": 32, "sample_rate": 24000, "frame_rate": 75.0}),
        num_reserved=5,
    )


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
