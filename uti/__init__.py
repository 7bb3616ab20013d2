"""Unified Tokenizer Interface: one shared space of discrete token IDs for text, image and audio."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
