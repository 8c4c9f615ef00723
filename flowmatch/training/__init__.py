"""Training: flow-matching losses, parameter EMA, atomic checkpoints and the ``fit`` loop."""

from flowmatch.training.checkpoint import load_checkpoint, save_checkpoint
from flowmatch.training.discrete_loss import (
    discrete_cross_entropy,
    discrete_nelbo,
    generalized_kl_loss,
)
from flowmatch.training.ema import EMA
from flowmatch.training.fit import FitResult, fit, lr_at
from flowmatch.training.loss import cfm_loss
from flowmatch.training.metric_induced_loss import metric_induced_kl_loss, metric_induced_nelbo
from flowmatch.training.product_loss import product_loss
from flowmatch.training.time_sampling import KumaraswamyTime, LogitNormalTime, UniformTime

__all__ = [
    "fit", "FitResult", "lr_at", "EMA", "save_checkpoint", "load_checkpoint",
    "cfm_loss", "discrete_cross_entropy", "generalized_kl_loss", "discrete_nelbo",
    "product_loss", "UniformTime", "LogitNormalTime", "KumaraswamyTime",
    "metric_induced_kl_loss",
    "metric_induced_nelbo",
]
