"""slm-toolkit: distill, prune, quantize, export, evaluate and serve small language models."""

__version__ = "0.1.0"
