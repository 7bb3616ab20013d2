"""LLaVA-Pretrain: `blip_laion_cc_sbu_558k.json`, a JSON list of {id, image, conversations}.

The caption is the `gpt` turn's value; the image path is relative to root (or `root/images/`,
where the official `images.zip` is often extracted). The data has no splits, so each row's split
comes from hash_split of its canonical ID. Canonical key: the entry's `id`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    locate,
    media_row,
    register_dataset,
    require_dir,
    hash_splits_option,
)
from sharding.manifest import HashSplits, ManifestError, Rejected

DEFAULT_FILE = "blip_laion_cc_sbu_558k.json"


@register_dataset
class LLaVAPretrain(DatasetAdapter):
    name = "llava"
    object_store = True  # reads its layout through root / name, .is_file(), .open() only (object_root)
    options = ("file", "split_fractions")

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        hashing = hash_splits_option(options)
        self.check_splits(splits, hashing.fractions)
        json_path = root / (options.get("file") or DEFAULT_FILE)  # an absolute --file replaces root here
        if not json_path.is_file():
            raise ManifestError(f"llava: {json_path} not found; put {DEFAULT_FILE} in --root or pass --file")
        try:
            with json_path.open("r", encoding="utf-8") as fh:
                entries = json.load(fh)
        except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, over-long ints, absurd nesting
            raise ManifestError(f"llava: {json_path} is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(entries, list):
            raise ManifestError(
                f"llava: {json_path} holds a JSON {type(entries).__name__}, expected a list of "
                "{id, image, conversations} objects"
            )
        for index, entry in enumerate(entries):
            yield self._row(root, index, entry, hashing, follow_symlinks)

    def _row(self, root: Path, index: int, entry: Any, hashing: HashSplits, follow_symlinks: bool) -> Item:
        where = f"entry {index}"
        if not isinstance(entry, dict):
            return Rejected(item=where, reason=f"expected an object, got {type(entry).__name__}")
        raw_id = entry.get("id")
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
            return Rejected(item=where, reason="missing or invalid 'id'")
        item = f"{self.name}:{raw_id}"
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            return Rejected(item=item, reason="missing 'image' path")
        turns = entry.get("conversations")
        captions = [
            t["value"].strip()
            for t in (turns if isinstance(turns, list) else [])
            if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str) and t["value"].strip()
        ]
        if not captions:
            return Rejected(item=item, reason="no 'gpt' turn with a caption in 'conversations'", path=image)
        path, problem = locate(root, [image, f"images/{image}"], item=item, follow_symlinks=follow_symlinks)
        if problem:
            return problem
        return media_row(
            dataset=self.name, key=str(raw_id), modality="image", path=path, captions=captions[:1],
            split=hashing(item), extra={"image": image},
        )
