"""Data sets: toy 2D distributions (and loaders that other modules add)."""

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
    "get_toy_dataset",
]
from flowmatch.data.brackets import (  # noqa: E402
    brackets_entropy,
    is_valid_brackets,
    sample_brackets,
    valid_prefix_length,
)

__all__ += ["brackets_entropy", "is_valid_brackets", "sample_brackets", "valid_prefix_length"]
