"""Entry point of ``python -m weaveloop.bench`` (see cli.py for the options)."""

import sys

from .cli import main

sys.exit(main())
