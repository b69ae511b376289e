"""``SyntheticFaces``: the record source over :func:`render_face`."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np

from data_pipelines.sources.base import Record
from data_pipelines.sources.synthetic.render import render_face
from data_pipelines.sources.synthetic.traits import identity_traits

MIN_RESOLUTION = 64
MAX_RESOLUTION = 512


class SyntheticFaces:
    """Procedurally rendered faces with exact 68-point landmarks and identity labels.

    ``identity = index // images_per_identity``. Picklable (plain attributes only).
    """

    def __init__(self, seed: int = 0, num_records: int = 10000, resolution: int = 256,
                 images_per_identity: int = 8, name: str = "synthetic") -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if int(num_records) < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
                             f"got {resolution}")
        if int(images_per_identity) < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
        self.seed = int(seed)
        self.num_records = int(num_records)
        self.resolution = int(resolution)
        self.images_per_identity = int(images_per_identity)
        self.name = str(name)
        self.has_identities = True

    def __len__(self) -> int:
        return self.num_records

    @property
    def num_identities(self) -> int:
        return -(-self.num_records // self.images_per_identity)

    def identity_indices(self, identity: int) -> np.ndarray:
        """Record indices of ``identity`` (empty when it has no records)."""
        identity = int(identity)
        if not 0 <= identity < self.num_identities:
            return np.zeros((0,), np.int64)
        start = identity * self.images_per_identity
        return np.arange(start, min(start + self.images_per_identity, self.num_records),
                         dtype=np.int64)

    def identity_traits(self, identity: int) -> dict[str, Any]:
        """The fixed traits every image of ``identity`` is drawn with."""
        return identity_traits(self.seed, int(identity))

    def __getitem__(self, index: int) -> Record:
        i = operator.index(index)
        if i < 0:
            i += self.num_records
        if not 0 <= i < self.num_records:
            raise IndexError(f"index {index} out of range for {self.num_records} records")
        identity = i // self.images_per_identity
        image, landmarks = render_face(self.seed, i, identity, self.resolution)
        return {
            "image": image, "landmarks": landmarks, "landmark_source": "synthetic",
            "identity": np.int64(identity), "index": i,
            "key": f"synthetic/{self.seed}/{i}", "error": "",
        }

    def __repr__(self) -> str:
        return (f"SyntheticFaces(seed={self.seed}, num_records={self.num_records}, "
                f"resolution={self.resolution}, "
                f"images_per_identity={self.images_per_identity}, name={self.name!r})")
