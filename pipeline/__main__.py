"""``python -m pipeline``: the command line (demo, bench, soak)."""

from ._cli import main

raise SystemExit(main())
