"""
Make C{tests.support} importable for the MCMP unit tests under any runner.
"""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
