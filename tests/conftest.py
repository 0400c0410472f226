"""
Suite-wide test settings.

Hypothesis runs deterministically and without deadlines (Twisted's profile), so
CI is reproducible and never flaky on a loaded machine.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "txmodcluster",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "100")),
)
settings.load_profile("txmodcluster")
