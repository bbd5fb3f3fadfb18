"""Triton (explicit model-control mode) behind the mmesh.ModelRuntime SPI: ``python -m runtime_adapters.triton``."""
