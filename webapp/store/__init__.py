"""Moved to `webapp.models.store`; these names stay importable for code not moved yet
(each module of the old package is an alias of its new one)."""

from webapp.models.store import *  # noqa: F401,F403
from webapp.models.store import __all__  # noqa: F401
