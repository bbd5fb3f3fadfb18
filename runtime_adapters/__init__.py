"""Model runtimes that implement the ``mmesh.ModelRuntime`` SPI for the mesh.

``server.py`` is the one place that speaks the SPI proto; it drives a ``base.RuntimeAdapter`` (the
built-in Python runtime in ``builtin/``, later MLServer/Triton adapters) and the ``puller``. This package
imports only ``mesh.errors`` and ``mesh.ids`` from the mesh: the mesh and its runtimes meet over gRPC.
"""
