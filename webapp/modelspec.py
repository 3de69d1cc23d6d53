"""Moved to `webapp.models.modelspec`; this name stays importable for code not moved yet."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("webapp.models.modelspec")
