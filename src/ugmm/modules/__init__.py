"""LightningModules: the cross-entropy :class:`Classifier` and the likelihood-trained :class:`DensityModel`."""

from ugmm.modules.base import NETS, OPTIMIZERS, SCHEDULERS, BaseModule, build_net, plain
from ugmm.modules.classifier import Classifier
from ugmm.modules.density import DensityModel

# loss name in the config -> module class
MODULES = {"cross_entropy": Classifier, "nll": DensityModel}

__all__ = [
    "MODULES",
    "NETS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "BaseModule",
    "Classifier",
    "DensityModel",
    "build_net",
    "plain",
]
