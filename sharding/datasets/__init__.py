"""Dataset adapters: read a dataset's real layout into manifest rows. Importing registers them all."""

from sharding.datasets.base import DatasetAdapter, Item, dataset_names, get_dataset, register_dataset
from sharding.datasets import audiocaps, clotho, hf, jsonl, llava, musiccaps, song_describer, wavcaps  # noqa: F401,E501  (registration side effect)

__all__ = ["DatasetAdapter", "Item", "dataset_names", "get_dataset", "register_dataset"]
