"""
Compatibility name: the helpers moved to L{tests.support.proxy_testlib}; import
them from there (this top-level import path breaks under
C{--import-mode=importlib}).  Kept only for tests written against the old
location; remove once none imports it.
"""

from tests.support.proxy_testlib import *  # noqa: F401,F403
