"""Data sets: toy 2D distributions, the earth (S²) and RNA (T⁷) loaders, bracket sequences.

Loaders take a path; nothing is downloaded.
"""

from flowmatch.data.brackets import (
    brackets_entropy,
    count_brackets,
    is_valid_brackets,
    sample_brackets,
    valid_prefix_length,
)
from flowmatch.data.earth import load_earth, load_earth_latlon, seeded_split
from flowmatch.data.rna import load_rna
from flowmatch.data.toy2d import (
    TOY_DATASETS,
    Checkerboard,
    EightGaussians,
    Moons,
    Spirals,
    ToyDataset,
    get_toy_dataset,
)

__all__ = [
    "TOY_DATASETS", "Checkerboard", "EightGaussians", "Moons", "Spirals", "ToyDataset",
    "get_toy_dataset", "load_earth", "load_earth_latlon", "seeded_split", "load_rna",
    "brackets_entropy", "is_valid_brackets", "sample_brackets", "valid_prefix_length",
    "count_brackets",
]
