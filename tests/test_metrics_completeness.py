import math

import pytest
import torch

from lightning_xai.metrics import relative_error, summarize


def test_relative_error_hand_computed():
    delta = torch.tensor([0.1, -0.5, 0.0])
    f_x = torch.tensor([3.0, 1.0, 2.0])
    f_b = torch.tensor([1.0, 2.0, 0.0])
    torch.testing.assert_close(relative_error(delta, f_x, f_b), torch.tensor([0.05, 0.5, 0.0]))


def test_relative_error_tiny_denominator_is_finite():
    delta = torch.tensor([1e-3, 0.0, 1e-3])
    f_x = torch.tensor([1.0, 1.0, 1.0])
    f_b = torch.tensor([1.0, 1.0, 1.0 - 1e-7])
    out = relative_error(delta, f_x, f_b, eps=1e-4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([10.0, 0.0, 10.0]))


def test_relative_error_broadcast_dtype_and_nan():
    out = relative_error(torch.tensor([0.2, 0.4], dtype=torch.float64), torch.tensor(2.0), torch.tensor([0.0, 1.0]))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([0.1, 0.4], dtype=torch.float64))
    out = relative_error(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert math.isnan(out[0]) and out[1] == 0.5


def test_relative_error_validation():
    with pytest.raises(ValueError, match="eps"):
        relative_error(torch.zeros(2), torch.zeros(2), torch.zeros(2), eps=0.0)
    with pytest.raises(ValueError, match="matching shapes"):
        relative_error(torch.zeros(2), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="f_x"):
        relative_error(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2))


def test_summarize():
    s = summarize(torch.arange(11.0))  # 0..10
    assert set(s) == {"median", "p90", "max", "count"}
    assert s["median"].item() == 5.0 and s["p90"].item() == pytest.approx(9.0) and s["max"].item() == 10.0
    assert s["count"].item() == 11
    s = summarize(torch.tensor([1.0, float("nan"), float("inf"), 3.0]))
    assert s["median"].item() == 2.0 and s["max"].item() == 3.0 and s["count"].item() == 2
    s = summarize(torch.tensor([float("nan")]))
    assert s["count"].item() == 0 and math.isnan(s["median"].item())
