"""uGMM-NN: Univariate Gaussian Mixture Model Neural Networks (arXiv 2509.07569)."""

__version__ = "0.1.0"
