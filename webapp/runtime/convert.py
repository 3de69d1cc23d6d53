"""Moved to `webapp.models.runtime.convert`; `python -m webapp.runtime.convert` still works."""

import importlib
import sys

if __name__ == "__main__":
    from webapp.models.runtime.convert import main

    sys.exit(main())
sys.modules[__name__] = importlib.import_module("webapp.models.runtime.convert")
