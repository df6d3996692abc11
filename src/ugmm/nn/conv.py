"""Convolutional features with a uGMM head: learned image features, probabilistic neurons on top.

The paper's suggested next step: keep convolutions for features and replace the final dense layers
with uGMM neurons. :class:`ConvNet` is one small feature extractor (:class:`ConvFeatures`) followed by
either a :class:`~ugmm.nn.uGMMNet` (``head="ugmm"``) or the same-size :class:`~ugmm.nn.MLP`
(``head="mlp"``; ``depth=0`` makes it a linear head), so the two differ only in the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ugmm.nn.network import MLP, uGMMNet

HEADS = ("ugmm", "mlp")


class ConvFeatures(nn.Module):
    """Two 3x3 conv blocks (conv, ReLU, 2x2 max-pool), then a linear projection to ``n_features`` and ReLU.

    Args:
        image_shape: ``(C, H, W)`` of the input images, e.g. ``(1, 28, 28)``.
        channels: output channels of the two conv blocks.
        n_features: size of the feature vector the head reads.
        normalize: end with a LayerNorm without affine parameters, so every image's features have mean 0
            and variance 1: their scale stays put while the extractor learns (a uGMM head's means and
            sigmas live in feature units).

    Shape: input ``(B, C*H*W)`` or ``(B, C, H, W)``; output ``(B, n_features)``, non-negative unless
    ``normalize``.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        n_features: int = 128,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if len(channels) != 2 or min(int(ch) for ch in channels) < 1 or int(n_features) < 1:
            raise ValueError(f"ConvFeatures needs two positive channel counts and n_features >= 1, got {channels}")
        if h < 4 or w < 4:
            raise ValueError(f"ConvFeatures needs images of at least 4x4, got {h}x{w}")
        self.image_shape = (c, h, w)
        self.n_features = int(n_features)
        c1, c2 = (int(ch) for ch in channels)
        self.blocks = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.normalize = bool(normalize)
        project = [nn.Linear(c2 * (h // 4) * (w // 4), self.n_features), nn.ReLU()]
        if self.normalize:
            project.append(nn.LayerNorm(self.n_features, elementwise_affine=False))
        self.project = nn.Sequential(*project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(x.reshape(len(x), *self.image_shape)))

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, n_features={self.n_features}, normalize={self.normalize}"


class ConvNet(nn.Module):
    """:class:`ConvFeatures` followed by a uGMM head or the same-size MLP head.

    Args:
        n_inputs: flattened image size (must equal ``prod(image_shape)``).
        n_outputs: classes.
        head: ``ugmm`` (a :class:`uGMMNet` over the features) or ``mlp``.
        image_shape, channels, n_features: the feature extractor (:class:`ConvFeatures`).
        feature_norm: :class:`ConvFeatures`' ``normalize`` (LayerNorm on the features), for either head.
        width, depth, dropout: the head's hidden sizes ``width, width/2, ...`` and dropout, as in
            :class:`uGMMNet` / :class:`MLP`; ``depth=0`` maps the features straight to the outputs.
        std_floor, std_param, backend: the uGMM head's layers (ignored by an MLP head).

    Shape: input ``(B, n_inputs)`` or ``(B, C, H, W)``; output ``(B, n_outputs)``: logits (MLP) or
    per-class log-densities (uGMM), both read by cross-entropy.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        head: str = "ugmm",
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        n_features: int = 128,
        feature_norm: bool = False,
        width: int = 64,
        depth: int = 1,
        dropout: float | Sequence[float] = 0.0,
        std_floor: float = 1e-3,
        std_param: str = "exp",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        expected = 1
        for s in image_shape:
            expected *= int(s)
        if int(n_inputs) != expected:
            raise ValueError(f"ConvNet: n_inputs={n_inputs} does not match image_shape {tuple(image_shape)}")
        self.features = ConvFeatures(image_shape, channels, n_features, normalize=feature_norm)
        if head == "ugmm":
            self.head = uGMMNet(
                n_features,
                n_outputs,
                width=width,
                depth=depth,
                dropout=dropout,
                std_floor=std_floor,
                std_param=std_param,
                backend=backend,
            )
        else:
            self.head = MLP(n_features, n_outputs, width=width, depth=depth, dropout=dropout)
        self.head_kind = head

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start a uGMM head on the features of a data sample (:meth:`uGMMNet.init_from_data`); an MLP head
        keeps its initialisation. The features come from the extractor as initialised now."""
        if isinstance(self.head, uGMMNet):
            self.head.init_from_data(self.features(x), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"head={self.head_kind!r}"
