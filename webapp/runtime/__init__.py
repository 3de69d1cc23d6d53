"""Moved to `webapp.models.runtime`; these names stay importable for code not moved yet
(each module of the old package is an alias of its new one)."""

from webapp.models.runtime import *  # noqa: F401,F403
from webapp.models.runtime import __all__  # noqa: F401
