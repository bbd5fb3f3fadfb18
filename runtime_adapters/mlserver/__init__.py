"""MLServer behind the mmesh.ModelRuntime SPI: ``python -m runtime_adapters.mlserver`` (see ``adapter.py``)."""
