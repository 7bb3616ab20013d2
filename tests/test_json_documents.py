"""A JSON document (a dataset's source file) given where JSONL is expected is named as one, with the
adapter or the conversion that reads it, never a hint that fails on line 1 again."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sharding.datasets.sniff import json_document
from sharding.manifest import ManifestError, build_manifest, read_manifest

WAVCAPS = {"num_captions_per_audio": 1, "data": [
    {"id": "180913", "file_name": "UK Mello.wav", "caption": "a man speaks", "duration": 3.0, "audio": "wav_path"},
    {"id": "180914", "file_name": "Rain.wav", "caption": "rain falls", "duration": 2.0, "audio": "wav_path"}]}
LLAVA = [{"id": "004539375", "image": "00453/004539375.jpg",
          "conversations": [{"from": "human", "value": "<image>\nRender a clear caption."},
                            {"from": "gpt", "value": "a red square"}]}]


def _wavcaps(tmp_path, indent):
    path = tmp_path / "json_files" / "FreeSound" / "fsd_final.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(WAVCAPS, indent=indent))
    return path


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty"])
def test_a_wavcaps_json_as_manifest_is_named_with_the_wavcaps_command(tmp_path, indent):
    path = _wavcaps(tmp_path, indent)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "is a JSON document" in msg and "WavCaps" in msg and "not JSONL" in msg
    # the root and source come from the layout; the adapter takes the folder, not the file
    assert f"`uti manifest --dataset wavcaps --root {tmp_path} --sources FreeSound --out manifest.jsonl`" in msg
    assert "--file" not in msg and "line 1" not in msg and "WAVCAPS_DIR" not in msg


def test_a_wavcaps_json_outside_the_layout_says_where_to_put_it(tmp_path):
    path = tmp_path / "fsd_final.json"
    path.write_text(json.dumps(WAVCAPS))
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert "--dataset wavcaps --root WAVCAPS_DIR --out" in str(info.value)
    assert "put it in WAVCAPS_DIR/json_files/SOURCE/ first" in str(info.value)


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty"])
def test_uti_manifest_jsonl_on_a_json_document_says_the_same(tmp_path, indent):
    path = _wavcaps(tmp_path, indent)
    with pytest.raises(ManifestError) as info:
        build_manifest("jsonl", tmp_path, file=str(path.relative_to(tmp_path)))
    assert "is a JSON document" in str(info.value) and "WavCaps" in str(info.value)
    assert "line 1" not in str(info.value)


def test_a_llava_list_points_at_the_llava_adapter_which_reads_it(tmp_path):
    path = tmp_path / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(LLAVA, indent=1))
    (tmp_path / "00453").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "00453" / "004539375.jpg")
    for attempt in (lambda: read_manifest(path), lambda: build_manifest("jsonl", tmp_path, file=path.name)):
        with pytest.raises(ManifestError) as info:
            attempt()
        assert f"--dataset llava --root DIR --file {path.name}" in str(info.value)
    build = build_manifest("llava", tmp_path, file=path.name)  # the hint leads somewhere
    assert [r.id for r in build.rows] == ["llava:004539375"]


def test_jsonl_is_not_taken_for_a_json_document(tmp_path):
    """Rows that happen to carry a `data` list, and a one-row JSONL, are still JSONL."""
    (tmp_path / "a.wav").write_bytes(b"")
    rows = [{"id": i, "modality": "text", "caption": f"c {i}", "data": [1, 2]} for i in range(2)]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "one.jsonl").write_text(json.dumps({"id": 0, "modality": "text", "caption": "c"}) + "\n")
    assert json_document(tmp_path / "two.jsonl") is None and json_document(tmp_path / "one.jsonl") is None
    assert len(build_manifest("jsonl", tmp_path, file="two.jsonl").rows) == 2
    assert json_document(tmp_path / "missing.json") is None


def test_other_json_documents_get_a_conversion(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"x": 1}, {"x": 2}], indent=2))
    (tmp_path / "obj.json").write_text(json.dumps({"items": [{"x": 1}]}, indent=2))
    for name, jq in (("list.json", "jq -c '.[]'"), ("obj.json", "jq -c '.items[]'")):
        with pytest.raises(ManifestError) as info:
            read_manifest(tmp_path / name)
        assert "is a JSON document" in str(info.value) and jq in str(info.value), str(info.value)


def test_the_wavcaps_command_it_gives_makes_a_manifest(tmp_path, monkeypatch):
    """The command of the hint, run as printed, reads the WavCaps folder."""
    import shlex

    import numpy as np
    import soundfile as sf

    from cli_helpers import uti_in_process

    path = _wavcaps(tmp_path, 2)
    for entry in WAVCAPS["data"]:
        clip = tmp_path / "audio" / "FreeSound" / f"{entry['id']}.flac"
        clip.parent.mkdir(parents=True, exist_ok=True)
        sf.write(clip, np.zeros(1600, np.float32), 16000)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    command = str(info.value).split("read the WavCaps folder with `", 1)[1].split("`", 1)[0]
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[0] == "uti"
    res = uti_in_process(*argv[1:])
    assert res.returncode == 0, res.stderr
    rows = read_manifest(tmp_path / "manifest.jsonl")
    assert sorted(r.id for r in rows) == ["wavcaps:FreeSound/180913", "wavcaps:FreeSound/180914"]
    assert {r.captions for r in rows} == {("a man speaks",), ("rain falls",)}


def test_broken_jsonl_is_still_a_broken_line(tmp_path):
    """Not every file that starts with '{' or '[' is a JSON document: a broken line keeps its own error."""
    for text in ("{nope\n", "[1, 2\n", '{"id": 1,\n'):
        (tmp_path / "m.jsonl").write_text(text)
        assert json_document(tmp_path / "m.jsonl") is None, text
        with pytest.raises(ManifestError, match="line 1: not valid JSON"):
            read_manifest(tmp_path / "m.jsonl")


def test_a_big_pretty_printed_document_is_seen_from_its_head(tmp_path):
    """Only the first MiB is read: a source file larger than that is still recognised."""
    from sharding.datasets.sniff import HEAD_BYTES

    entries = [{**WAVCAPS["data"][0], "id": str(i)} for i in range(HEAD_BYTES // 100)]
    path = _wavcaps(tmp_path, 2)
    path.write_text(json.dumps({"data": entries}, indent=2))
    assert path.stat().st_size > HEAD_BYTES
    doc = json_document(path)
    assert doc is not None and doc.shape == "wavcaps" and doc.first["id"] == "0"
