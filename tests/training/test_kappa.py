"""κ schedules against Lin et al. eq. 14, written out independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from eqkern.training.kappa import (ConstantKappa, CosineKappa, ExponentialKappa, LinearKappa, StepKappa,
                              make_schedule)

E = np.arange(0, 251)


def test_linear_matches_eq14():
    s = LinearKappa(0.65, total_epochs=250)
    want = -0.65 * E / 250 + 0.65
    np.testing.assert_allclose([s(int(e)) for e in E], want, rtol=0, atol=1e-12)
    assert s(0) == 0.65 and s(125) == pytest.approx(0.325) and s(250) == 0.0
    assert s(300) == 0.0  # clamped past E_total, never negative


def test_exponential_matches_eq14():
    s = ExponentialKappa(1.0, gamma=0.02)
    np.testing.assert_allclose([s(int(e)) for e in E], np.exp(-0.02 * E), rtol=1e-12)
    assert s(50) == pytest.approx(np.exp(-1.0))


def test_cosine_matches_eq14():
    s = CosineKappa(0.85, total_epochs=250, kappa_min=0.1)
    want = 0.1 + 0.5 * (0.85 - 0.1) * (1 + np.cos(np.pi * E / 250))
    np.testing.assert_allclose([s(int(e)) for e in E], want, rtol=0, atol=1e-12)
    assert s(0) == pytest.approx(0.85) and s(125) == pytest.approx(0.475) and s(250) == pytest.approx(0.1)
    assert s(400) == pytest.approx(0.1)


def test_constant_and_step():
    assert [ConstantKappa(0.3)(e) for e in (0, 7, 99)] == [0.3] * 3
    s = StepKappa(1.0, every=10, factor=0.5)
    assert [s(e) for e in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_state_dict_roundtrip_and_errors():
    a = make_schedule("cosine", 0.65, total_epochs=40, kappa_min=0.05)
    b = make_schedule("cosine", 1.0)
    b.load_state_dict(a.state_dict())
    assert [a(e) for e in range(41)] == [b(e) for e in range(41)]
    with pytest.raises(ValueError, match="linear"):
        make_schedule("linear", 1.0).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="unknown kappa schedule 'warm'.*constant"):
        make_schedule("warm", 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        a(-1)
