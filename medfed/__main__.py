"""``python -m medfed`` is the ``medfed`` command."""

from medfed.cli import main

raise SystemExit(main())
