"""`python -m webapp COMMAND`: see `webapp.cli`."""

import sys

from .cli import main

sys.exit(main())
