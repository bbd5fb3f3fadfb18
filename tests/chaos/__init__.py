"""Chaos suite (``make test-chaos``, marker ``chaos``; not in the default run): real pods, runtimes and etcd
broken on purpose under a Zipf client load. Each scenario asserts on outcomes (codes, convergence), never on
speed, and writes its figures to ``var/chaos/<scenario>.json`` (docs/benchmarks.md "Chaos").

Every scenario is bounded: its load stops after a fixed number of requests or seconds, every wait has a
timeout, and processes, mounts and temp dirs are released in ``finally`` blocks even when it fails."""
