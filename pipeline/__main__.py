"""``python -m pipeline``: the command line (``demo``)."""

from ._cli import main

raise SystemExit(main())
