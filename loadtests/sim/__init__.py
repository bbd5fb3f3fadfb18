"""Trace-driven simulator of the mesh (``python -m loadtests.sim``); see ``loadtests/sim/__main__.py``."""
