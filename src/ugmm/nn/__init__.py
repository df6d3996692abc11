"""Torch-only uGMM-NN building blocks: the layer, networks and generative inference.

Usable in any plain PyTorch script; never imports Lightning or Hydra.
"""

from ugmm.nn.conv import ConvFeatures, ConvNet
from ugmm.nn.inference import impute_mean, impute_mpe, log_density_grid, log_joint, log_joint_all, predict
from ugmm.nn.layer import component_dropout_mask, uGMMLayer
from ugmm.nn.network import MLP, LinearClassifier, hidden_sizes, uGMMNet

__all__ = [
    "MLP",
    "LinearClassifier",
    "ConvFeatures",
    "ConvNet",
    "component_dropout_mask",
    "hidden_sizes",
    "impute_mean",
    "impute_mpe",
    "log_density_grid",
    "log_joint",
    "log_joint_all",
    "predict",
    "uGMMLayer",
    "uGMMNet",
]
