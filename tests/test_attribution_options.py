"""Performance options: automatic internal batch size, adaptive Integrated Gradients, autocast, channels_last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attribution_helpers import tiny_cnn

from lightning_xai.attribution import METHODS, _batching, explain, explain_detailed, integrated_gradients


@pytest.fixture
def relu_batch():
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    return tiny_cnn(seed=3), x


# ---------------------------------------------------------------------------------------- automatic batch size


def test_auto_rows_rule(monkeypatch):
    monkeypatch.setattr(_batching, "_cpu_available_bytes", lambda: 8 << 30)
    # CPU: budget min(8 GiB / 4, 2 GiB) = 2 GiB; 3 x 1 MiB per row -> 682 rows, capped at CPU_MAX_ROWS.
    assert _batching.auto_rows(1 << 20, torch.device("cpu")) == _batching.CPU_MAX_ROWS
    assert _batching.auto_rows(64 << 20, torch.device("cpu")) == (2 << 30) // (3 * (64 << 20))
    assert _batching.auto_rows(1 << 40, torch.device("cpu")) == 1
    # CUDA (CPU-testable): half of the free memory.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 << 30, 80 << 30))
    assert _batching.auto_rows(16 << 20, torch.device("cuda")) == (6 << 30) // (3 * (16 << 20))
    assert _batching.auto_rows(1, torch.device("cuda")) == _batching.CUDA_MAX_ROWS


def test_auto_batch_size_measures_saved_activations(monkeypatch, relu_batch):
    net, x = relu_batch
    seen = []
    real = _batching.auto_rows

    def spy(bytes_per_row, device):
        seen.append(bytes_per_row)
        return real(bytes_per_row, device)

    monkeypatch.setattr(_batching, "auto_rows", spy)
    auto = integrated_gradients(net, x, 1, n_steps=5)
    # At least the input and the two 8-channel feature maps per row are saved for backward.
    assert len(seen) == 1 and seen[0] >= 4 * 12 * 12 * (3 + 8 + 8)
    torch.testing.assert_close(auto, integrated_gradients(net, x, 1, n_steps=5, internal_batch_size=8))


def test_small_budget_means_small_chunks_same_result(monkeypatch, relu_batch):
    net, x = relu_batch
    monkeypatch.setattr(_batching, "memory_budget", lambda device: (1, 64))
    calls = []
    forward = net.forward

    def counting_forward(inp):
        calls.append(inp.shape[0])
        return forward(inp)

    monkeypatch.setattr(net, "forward", counting_forward)
    out = integrated_gradients(net, x, 1, n_steps=3)
    assert calls[0] == min(_batching.PROBE_ROWS, 24) and set(calls[1:]) == {1}
    monkeypatch.undo()
    torch.testing.assert_close(out, integrated_gradients(net, x, 1, n_steps=3, internal_batch_size=24))


# -------------------------------------------------------------------------------------------------- adaptive IG


def test_adaptive_ig_refines_only_samples_that_need_it(relu_batch):
    net, x = relu_batch
    tol = 0.01
    fixed = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=5)
    out = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=5, tolerance=tol, max_steps=129)
    evals, err = out.ig_evals, out.ig_relative_error
    assert evals.dtype == torch.long and evals.shape == (8,)
    assert (err <= tol).all(), err
    assert (fixed.ig_relative_error > tol).any()  # the test is not vacuous
    # Samples already within tolerance keep their n_steps evaluations; refined ones follow 5 -> 9 -> 17 -> ...
    ok = fixed.ig_relative_error <= tol
    assert (evals[ok] == 5).all() and (evals[~ok] > 5).all()
    assert set(evals.tolist()) <= {5, 9, 17, 33, 65, 129}
    # Reusing nodes on the doubled grid gives exactly the fixed-step result at the node count reached.
    for i in range(x.shape[0]):
        ref = integrated_gradients(net, x[i:i + 1], 1, n_steps=int(evals[i]))
        torch.testing.assert_close(out.maps["integrated_gradients"][i:i + 1], ref, rtol=1e-4, atol=1e-6)


def test_adaptive_ig_respects_max_steps(relu_batch):
    net, x = relu_batch
    out = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=3, tolerance=1e-9, max_steps=10)
    assert out.ig_evals.tolist() == [9] * 8  # 3 -> 5 -> 9; the next (17) would exceed 10


def test_adaptive_in_explain_keeps_other_maps(relu_batch):
    net, x = relu_batch
    out = explain_detailed(net, x, 1, n_steps=3, tolerance=0.01, max_steps=33)
    ref = explain(net, x, 1, ("saliency", "grad_cam"))
    for name in ("saliency", "grad_cam"):
        torch.testing.assert_close(out.maps[name], ref[name])
    assert out.ig_evals.max() > 3


# --------------------------------------------------------------------------------------- autocast, channels_last


def test_bf16_autocast_agrees_with_fp32(relu_batch):
    net, x = relu_batch
    ref = explain_detailed(net, x, 1, n_steps=8)
    out = explain_detailed(net, x, 1, n_steps=8, autocast_dtype=torch.bfloat16)
    for name in METHODS:
        assert out.maps[name].dtype == torch.float32
        cos = F.cosine_similarity(out.maps[name].flatten(1), ref.maps[name].flatten(1))
        assert cos.min() >= 0.99, (name, cos)
    assert out.logits.dtype == torch.float32
    # Completeness still holds to the quadrature's accuracy (bf16 rounding on top).
    assert out.ig_relative_error.max() <= ref.ig_relative_error.max() + 0.02


def test_channels_last_matches_default(relu_batch):
    net, x = relu_batch
    ref = explain(net, x, 1, n_steps=4)
    out = explain(net, x, 1, n_steps=4, channels_last=True)
    for name in METHODS:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=1e-6)


def test_autocast_dtype_validation(relu_batch):
    net, x = relu_batch
    with pytest.raises(TypeError, match="autocast_dtype"):
        explain(net, x, 1, autocast_dtype="bf16")
