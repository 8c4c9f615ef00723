"""Training: the flow-matching loss, parameter EMA, atomic checkpoints and the ``fit`` loop."""

from flowmatch.training.checkpoint import load_checkpoint, save_checkpoint
from flowmatch.training.ema import EMA
from flowmatch.training.fit import FitResult, fit, lr_at
from flowmatch.training.loss import cfm_loss
from flowmatch.training.time_sampling import LogitNormalTime, UniformTime

__all__ = [
    "EMA", "FitResult", "LogitNormalTime", "UniformTime", "cfm_loss", "fit",
    "load_checkpoint", "lr_at", "save_checkpoint",
]
from flowmatch.training.discrete_loss import (  # noqa: E402
    discrete_cross_entropy,
    discrete_nelbo,
    generalized_kl_loss,
)

__all__ += ["discrete_cross_entropy", "discrete_nelbo", "generalized_kl_loss"]
