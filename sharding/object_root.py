"""A dataset root in an object store (`uti manifest --root s3://bucket/clotho`).

The adapters were written against local folders (`root / name`, `.is_file()`, `.open()`); an
ObjectRoot answers the same questions from ONE listing of the prefix, taken up front: existence and
sizes come from the object metadata of that listing, caption/metadata files are fetched whole, and
media objects are never read at manifest time (the tokenize read tasks stream them).

Confinement: every path an adapter resolves comes from data (CSV cells, JSON fields), so its *text*
must name a key under the root prefix: no empty or NUL-holding path, no leading "/", no URL (another
bucket), no ".." component. Object stores have no symlinks, so the text is the whole story.
"""

from __future__ import annotations

import io
import posixpath
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable

from sharding.paths import PathEscapeError
from sharding.storage import filesystem, protocol_of, storage_errors


class ObjectPath:
    """One key under an ObjectRoot, with the few Path methods the adapters use."""

    def __init__(self, root: "ObjectRoot", rel: str):
        self.root = root
        self.rel = rel

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel)

    def __truediv__(self, other: str) -> "ObjectPath":
        return ObjectPath(self.root, posixpath.join(self.rel, other))

    def __str__(self) -> str:
        return self.root.url_of(self.rel)

    __fspath__ = __str__

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def is_file(self) -> bool:
        return self.rel in self.root.sizes

    def is_dir(self) -> bool:
        prefix = self.rel.rstrip("/") + "/"
        return any(k.startswith(prefix) for k in self.root.sizes)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def size(self) -> int | None:
        return self.root.sizes.get(self.rel)

    def read_bytes(self) -> bytes:
        with storage_errors(self.root.url):
            return self.root.fs.cat_file(self.root.key_of(self.rel))

    def open(self, mode: str = "r", encoding: str | None = None, newline: str | None = None, **_: Any):
        """Read-only: the whole object (caption and metadata files are small next to the media)."""
        if any(c in mode for c in "wax+"):
            raise OSError(f"{self}: object roots are read-only")
        try:
            data = self.read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(2, "No such object", str(self)) from exc
        raw = io.BytesIO(data)
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding or "utf-8", newline=newline)


@dataclass
class ObjectRoot:
    """s3://bucket/prefix (or gs://...) listed once; `sizes` maps keys relative to the prefix to bytes."""

    url: str
    fs: Any = field(repr=False)
    prefix: str  # bucket/prefix as the filesystem names it, no trailing "/"
    sizes: dict[str, int] = field(repr=False)

    @classmethod
    def open(cls, url: str) -> "ObjectRoot":
        url = url.rstrip("/")
        fs, prefix = filesystem(url)
        prefix = prefix.rstrip("/")
        with storage_errors(url, "--root"):
            found = fs.find(prefix, detail=True)
        start = prefix + "/"
        sizes = {k[len(start):]: int(v.get("size") or 0) for k, v in found.items()
                 if k.startswith(start) and v.get("type", "file") == "file"}
        return cls(url=url, fs=fs, prefix=prefix, sizes=sizes)

    # Path-like use by the adapters: `root / "clotho_captions_development.csv"`.
    def __truediv__(self, rel: str) -> ObjectPath:
        return ObjectPath(self, rel)

    def __str__(self) -> str:
        return self.url

    __fspath__ = __str__

    def is_dir(self) -> bool:
        return bool(self.sizes)

    exists = is_dir

    def key_of(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def resolve(self, relative: str) -> ObjectPath:
        """The object a data-given relative path names, or PathEscapeError if its text leaves the prefix."""
        rel = str(relative)
        if not rel or "\x00" in rel:
            raise PathEscapeError(f"path {rel!r} is empty or contains a NUL byte; give a key relative to {self.url}")
        if protocol_of(rel) is not None:
            raise PathEscapeError(f"path {rel!r} is a URL; dataset paths must be relative to the dataset root "
                                  f"{self.url} (no other bucket or prefix)")
        if rel.startswith("/") or rel.startswith("\\"):
            raise PathEscapeError(f"path {rel!r} is absolute; dataset paths must be relative to {self.url}")
        parts = rel.replace("\\", "/").split("/")
        if ".." in parts:
            raise PathEscapeError(f"path {rel!r} has a '..' component; dataset paths must stay under {self.url}")
        return ObjectPath(self, posixpath.normpath("/".join(p for p in parts if p not in ("", "."))))

    def find(self, candidates: Iterable[str]) -> ObjectPath | None:
        """First candidate that is an object under the root (NFC and NFD spellings tried), else None."""
        for cand in candidates:
            for form in dict.fromkeys([cand, unicodedata.normalize("NFC", cand), unicodedata.normalize("NFD", cand)]):
                path = self.resolve(form)
                if path.is_file():
                    return path
        return None


__all__ = ["ObjectPath", "ObjectRoot"]
