"""Development tooling, not part of a production pod: ``mesh up`` (``cluster``), the embedded etcd used by
``mesh up`` and the tests (``etcd``), and the end-to-end demo (``demo``, ``python -m mesh.devtools.demo``)."""
