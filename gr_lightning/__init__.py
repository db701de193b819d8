"""gr-lightning: generative recommenders (HSTU) on PyTorch Lightning."""

__version__ = "0.1.0"
