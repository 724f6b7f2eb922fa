"""The circular correlation against its definition and invariances."""

import math

import numpy as np
import pytest

from pyrovae.metrics import circular_correlation


def test_circular_correlation_against_its_definition_and_invariances():
    rng = np.random.default_rng(0)
    a = rng.vonmises(0.5, 2.0, 500)
    b = a + 0.3 * rng.standard_normal(500)
    abar, bbar = math.atan2(np.sin(a).sum(), np.cos(a).sum()), math.atan2(np.sin(b).sum(), np.cos(b).sum())
    reference = (np.sin(a - abar) * np.sin(b - bbar)).sum() / math.sqrt(
        (np.sin(a - abar) ** 2).sum() * (np.sin(b - bbar) ** 2).sum())
    assert circular_correlation(a, b) == pytest.approx(abs(reference), rel=1e-12)
    assert circular_correlation(a, -a + 1.0) == pytest.approx(1.0)  # a reflection and rotation
    assert circular_correlation(a, rng.uniform(-math.pi, math.pi, 500)) < 0.15

