"""``python -m mesh``: the ``mesh`` command line (``mesh serve`` runs one pod; see mesh.cli)."""

from mesh.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
