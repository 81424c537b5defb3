"""``python -m layerprune.cli`` (what ``layerprune demo`` uses to start its child processes)."""

import sys

from layerprune.cli import main

sys.exit(main())
