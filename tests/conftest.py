"""Shared fixtures. Loading codecs costs seconds, so the default tokenizer is built once per session."""

from __future__ import annotations

import os

import pytest

# Keep test runs quiet and local: no Ray dashboard, no usage stats, no hub lookups.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_tokenizer():
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer()


@pytest.fixture(scope="session")
def default_space(default_tokenizer):
    return default_tokenizer.space
