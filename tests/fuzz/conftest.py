"""Hypothesis profiles for the property-based fuzz suite (``tests/fuzz``, marker ``fuzz``).

``fuzz-fast`` (the default here) keeps every property to a bounded number of examples so the suite runs
in seconds in the default test run and in CI; ``fuzz-long`` is for a deliberate fuzzing session:
``pytest tests/fuzz --hypothesis-profile=fuzz-long``. Neither has a deadline (a slow, shared CI box must
never fail a property on time) and neither writes an example database into the repository.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("fuzz-fast", max_examples=150, **_COMMON)
settings.register_profile("fuzz-long", max_examples=20_000, **_COMMON)
if settings.get_current_profile_name() == "default":
    settings.load_profile("fuzz-fast")
