"""Velocity fields: networks and the wrappers that adapt them (guidance, projection, conversion).

A velocity field is any ``torch.nn.Module`` (or callable) called as ``field(x, t, **cond)`` with x
of shape [B, ...] and t of shape [B]; it returns a tangent vector shaped like x, or posterior
logits [..., K] for discrete data.
"""

from flowmatch.models.ambient import AmbientField
from flowmatch.models.discrete import (
    DiscreteGuidance,
    DiscreteMLP,
    DiscreteTransformer,
    ExactPosterior,
)
from flowmatch.models.embedding import SinusoidalTimeEmbedding
from flowmatch.models.features import RandomFourierFeatures, TorusFourierFeatures
from flowmatch.models.guidance import ClassifierFreeGuidance, ProductGuidance, drop_condition
from flowmatch.models.mlp import MLP
from flowmatch.models.resnet import ResidualMLP, TimeResidualBlock
from flowmatch.models.wrappers import PredictionConverter, TangentProjected

__all__ = [
    "MLP", "ResidualMLP", "TimeResidualBlock", "AmbientField", "SinusoidalTimeEmbedding",
    "ClassifierFreeGuidance", "ProductGuidance", "drop_condition",
    "PredictionConverter", "TangentProjected",
    "DiscreteMLP", "DiscreteTransformer", "DiscreteGuidance", "ExactPosterior",
    "RandomFourierFeatures", "TorusFourierFeatures",
]
