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
