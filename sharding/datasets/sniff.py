"""Tell a JSON document from JSONL, and name the adapter (or the conversion) that reads it.

A source file such as LLaVA's `blip_laion_cc_sbu_558k.json` (a list) or a WavCaps `json_files/<source>/*.json`
(an object whose `data` lists the clips) is one JSON document, not one object per line. Given to
`--manifest` or to `uti manifest --dataset jsonl`, it would fail on line 1; these functions say what the
file is instead. Only the file's first MiB is read: enough to see its shape, cheap on a 200 MB source file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

HEAD_BYTES = 1 << 20
_DATA_LIST = re.compile(r'"data"\s*:\s*\[')
_OBJECT_START = re.compile(r'\{\s*"(?:[^"\\]|\\.)*"\s*:')  # `{"key":`, across newlines


@dataclass(frozen=True)
class JsonDocument:
    """A file that is one JSON document: a list, or an object (`list_key`: the key of the list of entries
    inside it, when known)."""

    kind: str  # "list" | "object"
    list_key: str | None
    first: Any  # the first entry of the list, None when it could not be read from the head

    @property
    def shape(self) -> str:
        """`llava`, `wavcaps` or `other`: the known source layout the entries look like."""
        entry = self.first if isinstance(self.first, dict) else {}
        if self.kind == "list" and {"image", "conversations"} <= set(entry):
            return "llava"
        if self.list_key == "data" and "caption" in entry and "id" in entry:
            return "wavcaps"
        return "other"


def json_document(path: str | os.PathLike) -> JsonDocument | None:
    """What `path` is when it is a single JSON document rather than JSONL; None for JSONL (or anything else,
    such as a broken line: that error is the reader's to name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES + 1)
    except OSError:
        return None
    whole = len(head) <= HEAD_BYTES
    text = head[:HEAD_BYTES].decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
    if not text.startswith(("[", "{")):
        return None
    lines = [line for line in text.split("\n") if line.strip()]
    line1 = _loads(lines[0])
    if isinstance(line1, dict):
        # A whole object on line 1: a JSONL row, unless it holds the `data` list and no row follows it.
        second = _loads(lines[1]) if len(lines) > 1 else None
        if isinstance(line1.get("data"), list) and not isinstance(second, dict):
            return JsonDocument(kind="object", list_key="data", first=(line1["data"] or [None])[0])
        return None
    if whole:  # the whole file is in the head: a document only if it parses as one
        doc = _loads(text)
        if isinstance(doc, list):
            return JsonDocument(kind="list", list_key=None, first=doc[0] if doc else None)
        if isinstance(doc, dict):
            key = next((k for k, v in doc.items() if isinstance(v, list)), None)
            return JsonDocument(kind="object", list_key=key, first=(doc[key] or [None])[0] if key else None)
        return None
    # A longer file whose line 1 is not a whole value: a pretty-printed document, or a one-line one
    # longer than the head. It must at least begin like one.
    if text.startswith("["):
        first = _first_entry(text, 1)
        return JsonDocument(kind="list", list_key=None, first=first) if first is not None else None
    if not _OBJECT_START.match(text):
        return None
    found = _DATA_LIST.search(text)
    return JsonDocument(kind="object", list_key="data" if found else None,
                        first=_first_entry(text, found.end()) if found else None)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _first_entry(text: str, start: int) -> Any:
    """The JSON value at `start` (the first entry of a list whose `[` ends before it), or None."""
    pos = len(text) - len(text[start:].lstrip())
    try:
        return json.JSONDecoder().raw_decode(text, pos)[0]
    except (ValueError, RecursionError):
        return None


def json_document_hint(path: str | os.PathLike) -> str | None:
    """One line saying that `path` is a JSON document and which command reads it; None when it is not one."""
    from sharding.datasets.base import dataset_names

    doc = json_document(path)
    if doc is None:
        return None
    path = os.fspath(path)
    name, stem = os.path.basename(path), os.path.splitext(os.path.basename(path))[0]
    shape = doc.shape
    if shape == "wavcaps":
        return _wavcaps_hint(path)
    if shape in dataset_names():
        what = {"llava": "a LLaVA-Pretrain list of {id, image, conversations}"}[shape]
        return (f"{path} is a JSON document ({what}), not JSONL; read it with `uti manifest --dataset {shape} "
                f"--root DIR --file {name} --out manifest.jsonl` (DIR: the dataset folder its media paths are "
                "relative to) and pass that manifest on")
    inner = ".[]" if doc.kind == "list" else f".{doc.list_key}[]" if doc.list_key else ".KEY[]"
    return (f"{path} is a JSON document (one {doc.kind}), not JSONL (one JSON object per line); convert it, e.g. "
            f"`jq -c '{inner}' {path} > {stem}.jsonl`" + (" (KEY: the list of entries)" if inner == ".KEY[]" else "")
            + ", each line an object with id, modality, path and caption, then `uti manifest --dataset jsonl "
            f"--root DIR --file {stem}.jsonl --out manifest.jsonl`")


def _wavcaps_hint(path: str) -> str:
    """The `uti manifest --dataset wavcaps` command for a WavCaps source JSON: its root and source come from
    the layout (ROOT/json_files/<source>/NAME.json) when the file is in it."""
    from sharding.datasets.wavcaps import DEFAULT_PATTERN, JSON_DIR, canonical_source, known_sources

    folder = os.path.dirname(os.path.abspath(path))
    above = os.path.dirname(folder)
    source = canonical_source(os.path.basename(folder))
    in_layout = source is not None and os.path.basename(above).lower() == JSON_DIR
    root = os.path.dirname(above) if in_layout else "WAVCAPS_DIR"
    command = f"uti manifest --dataset wavcaps --root {shlex.quote(root)}" + (f" --sources {source}" if source else "")
    place = "" if in_layout else f" (put it in WAVCAPS_DIR/{JSON_DIR}/SOURCE/ first, SOURCE one of {known_sources()})"
    return (f"{path} is a JSON document (a WavCaps source file: an object whose 'data' lists {{id, caption, "
            f"...}}), not JSONL; read the WavCaps folder with `{command} --out manifest.jsonl`{place}, the clips "
            f"found as {DEFAULT_PATTERN} under the root (--audio-pattern for another layout), and pass that "
            "manifest on")
