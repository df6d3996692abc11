"""LightningModules: the cross-entropy :class:`Classifier` and the likelihood-trained :class:`DensityModel`."""

from ugmm.modules.base import BaseModule, build_net, build_optimizer, build_scheduler
from ugmm.modules.classifier import Classifier
from ugmm.modules.density import DensityModel

# the ``loss`` hyperparameter of a checkpoint -> the class that loads it
MODULES = {cls.loss_name: cls for cls in (Classifier, DensityModel)}

__all__ = [
    "MODULES",
    "BaseModule",
    "Classifier",
    "DensityModel",
    "build_net",
    "build_optimizer",
    "build_scheduler",
]
