"""``python -m loadtests.ray_serve``: the peer comparison with Ray Serve (see ``driver``)."""

from loadtests.ray_serve.driver import main

raise SystemExit(main())
