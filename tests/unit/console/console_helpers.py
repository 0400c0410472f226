"""
Compatibility name: the helpers moved to L{tests.support.console_helpers}; import
them from there (this top-level import path breaks under
C{--import-mode=importlib}).  Kept only for tests written against the old
location; remove once none imports it.
"""

from tests.support.console_helpers import *  # noqa: F401,F403
