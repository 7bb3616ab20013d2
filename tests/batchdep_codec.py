"""A deliberately batch-dependent audio codec, for the actors' start-up self-check.

EnCodec (the default preset's random weights) whose codes shift by the number of other clips in the
same encode call: encoded alone, a clip gets EnCodec's codes; encoded with three others, every code moves
by 3. It is the failure the self-check exists for (kernels picked by the batch shape), made certain.
Registered as the `uti.codecs` entry point BATCHDEP_KIND by a hand-written .dist-info
(`write_dist_info`), so the driver and Ray's worker processes find it through PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from uti.codecs.base import EncodedAudio
from uti.codecs.encodec_audio import EncodecAudioCodec
from uti.config import AudioConfig

BATCHDEP_KIND = "batchdep_h28"  # a kind no real codec has


@dataclass(kw_only=True, frozen=True)
class BatchDependentSettings(AudioConfig):
    kind: str = BATCHDEP_KIND

    def __post_init__(self) -> None:  # AudioConfig's own check allows kind "encodec" only
        pass


class BatchDependentCodec(EncodecAudioCodec):
    kind = BATCHDEP_KIND
    settings = BatchDependentSettings

    def describe(self, version=None):
        desc = super().describe() if version is None else super().describe(version)
        return dataclasses.replace(desc, kind=BATCHDEP_KIND)

    def encode(self, clips):
        encoded = super().encode(clips)
        shift = len(clips) - 1  # how many others share the call: exactly what must never change a code
        return [EncodedAudio(codes=(e.codes + shift) % self.codebook_size, n_samples=e.n_samples, extra=e.extra)
                for e in encoded]


def write_dist_info(folder: Path) -> Path:
    """A .dist-info in `folder` whose entry point registers BatchDependentCodec (put `folder` and this file's
    folder on PYTHONPATH): no wheel, no pip, nothing installed into the environment."""
    dist = folder / "uti_batchdep_h28-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uti-batchdep-h28\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[uti.codecs]\n{BATCHDEP_KIND} = batchdep_codec:BatchDependentCodec\n")
    return dist
