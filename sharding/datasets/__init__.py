"""Dataset adapters: read a dataset's real layout into manifest rows. Importing registers them all."""

from sharding.datasets.base import DatasetAdapter, Item, dataset_names, get_dataset, register_dataset
from sharding.datasets import audiocaps, clotho, hf, jsonl, llava  # noqa: F401  (registration side effect)
from sharding.datasets import musiccaps, song_describer  # noqa: F401  (registration side effect)

__all__ = ["DatasetAdapter", "Item", "dataset_names", "get_dataset", "register_dataset"]
