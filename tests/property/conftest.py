"""Hypothesis profiles for the property suite.

``ci`` (the default) keeps the suite to seconds so it runs with every test
run; ``long`` is the fuzzing run (``make fuzz``). The profile is chosen with
``APIKEYS_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The server is started once per test and keeps its state across examples
# on purpose: every property must hold whatever earlier examples did.
_SHARED = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=150, **_SHARED)
settings.register_profile("long", max_examples=3000, **_SHARED)
settings.load_profile(os.environ.get("APIKEYS_HYPOTHESIS_PROFILE", "ci"))
