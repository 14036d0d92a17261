"""Performance options: automatic internal batch size, adaptive Integrated Gradients, autocast, channels_last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attribution_helpers import tiny_cnn

from lightning_xai.attribution import (
    METHODS,
    _batching,
    explain,
    explain_detailed,
    integrated_gradients,
    saliency,
)


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


def _path_alphas(net, x_i, run):
    """The alphas at which ``run()`` evaluated ``net`` on the single sample ``x_i`` (zero baseline: rows are a * x)."""
    seen = []
    forward = net.forward

    def spy(inp):
        seen.append((inp.detach() * x_i).flatten(1).sum(1) / (x_i * x_i).sum())
        return forward(inp)

    net.forward = spy
    try:
        out = run()
    finally:
        del net.forward
    return out, torch.cat(seen).double()


def test_adaptive_ig_refines_only_samples_that_need_it(relu_batch):
    net, x = relu_batch
    tol = 0.01
    fixed = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=5)
    out = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=5, tolerance=tol, max_steps=129)
    evals, err = out.ig_evals, out.ig_relative_error
    assert evals.dtype == torch.long and evals.shape == (8,)
    assert (err <= tol).all(), err
    assert (fixed.ig_relative_error > tol).any()  # the test is not vacuous
    # Samples already within tolerance keep their n_steps evaluations and the fixed-step result bit for bit.
    ok = fixed.ig_relative_error <= tol
    assert (evals[ok] == 5).all() and (evals[~ok] > 5).all()
    torch.testing.assert_close(out.maps["integrated_gradients"][ok], fixed.maps["integrated_gradients"][ok],
                               rtol=0, atol=0)
    # Refined samples: the trapezoid rule on the non-uniform nodes they reached, recomputed independently from
    # saliency at those nodes (each sample's refinement depends on that sample alone, so it can run by itself).
    attr = out.maps["integrated_gradients"]
    for i in (~ok).nonzero().squeeze(1).tolist():
        xi = x[i:i + 1]
        single, alphas = _path_alphas(net, xi, lambda xi=xi: explain_detailed(
            net, xi, 1, ("integrated_gradients",), n_steps=5, tolerance=tol, max_steps=129, internal_batch_size=4))
        assert int(single.ig_evals) == int(evals[i]) == alphas.numel()
        nodes = torch.sort(alphas).values
        assert nodes[0].abs() < 1e-6 and (nodes[-1] - 1).abs() < 1e-6
        assert int((torch.diff(nodes) > 1e-9).sum()) == nodes.numel() - 1  # no node evaluated twice
        h = torch.diff(nodes)
        weights = torch.zeros_like(nodes)
        weights[:-1] += h / 2
        weights[1:] += h / 2
        grads = torch.cat([saliency(net, float(a) * xi, 1) for a in nodes.float()])
        ref = xi * (weights.float().view(-1, 1, 1, 1) * grads).sum(0, keepdim=True)
        torch.testing.assert_close(attr[i:i + 1], ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(single.maps["integrated_gradients"], ref, rtol=1e-4, atol=1e-6)
    # Sum rule, as for fixed steps: sum(attr) = f(x) - f(b) + delta.
    with torch.no_grad():
        f_x, f_b = net(x)[:, 1], net(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(attr.flatten(1).sum(1), f_x - f_b + out.ig_delta, rtol=1e-4, atol=1e-5)


def test_adaptive_ig_refines_where_the_kink_is():
    # f(x) = relu(w . x - c): along the path f is linear up to one kink, so the trapezoid rule is exact on every
    # interval but the kink's. Local refinement adds one node per round next to the kink; doubling a uniform grid
    # would need n - 1 new nodes per round for the same error.
    torch.manual_seed(0)
    w = torch.randn(1, 3 * 4 * 4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        net[1].weight.copy_(w)
        s = float((w * x.flatten(1)).sum())
        net[1].bias.fill_(-0.37 * s)  # kink at alpha = 0.37, inside an interval of the 9-node grid
    out = explain_detailed(net, x, 0, ("integrated_gradients",), n_steps=9, tolerance=1e-3, max_steps=200)
    assert float(out.ig_relative_error) <= 1e-3
    assert 9 < int(out.ig_evals) <= 9 + 12  # a handful of bisections around the kink
    # Exact IG for this model: (x - b) * w * (1 - 0.37); the adaptive map is that up to the tolerance.
    exact = x * w.view(1, 3, 4, 4) * (1 - 0.37)
    torch.testing.assert_close(out.maps["integrated_gradients"], exact, rtol=2e-3, atol=1e-6)


def test_adaptive_ig_respects_max_steps(relu_batch):
    net, x = relu_batch
    out = explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=3, tolerance=1e-9, max_steps=10)
    assert (out.ig_evals <= 10).all() and (out.ig_evals > 3).all()
    assert (out.ig_evals == 10).any()


def test_adaptive_in_explain_keeps_other_maps(relu_batch):
    net, x = relu_batch
    out = explain_detailed(net, x, 1, n_steps=3, tolerance=0.01, max_steps=33)
    ref = explain(net, x, 1, ("saliency", "grad_cam"))
    for name in ("saliency", "grad_cam"):
        torch.testing.assert_close(out.maps[name], ref[name])
    assert out.ig_evals.max() > 3


# ------------------------------------------------------------------------------------------------------- memory


class _LiveSaved:
    """Peak of the live bytes autograd saves for backward (parameters and buffers excluded): deterministic."""

    def __init__(self, model):
        self.live = self.peak = 0
        self.skip = {t.data_ptr() for t in model.parameters()} | {t.data_ptr() for t in model.buffers()}

    def pack(self, tensor):
        if tensor.data_ptr() in self.skip:
            return tensor
        return _Held(self, tensor)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(
            self.pack, lambda held: held.tensor if isinstance(held, _Held) else held)


class _Held:
    def __init__(self, counter, tensor):
        self.counter, self.tensor, self.nbytes = counter, tensor, tensor.numel() * tensor.element_size()
        counter.live += self.nbytes
        counter.peak = max(counter.peak, counter.live)

    def __del__(self):
        self.counter.live -= self.nbytes


@pytest.mark.parametrize("tolerance", [None, 1e-3])
def test_explanation_needs_no_more_memory_than_a_training_step(monkeypatch, tolerance):
    batch = 6
    net = tiny_cnn(seed=1)
    x = torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    probes = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    net.train()
    train = _LiveSaved(net)
    with train.hooks():
        loss = F.cross_entropy(net(x), torch.arange(batch) % 3)
        grads = torch.autograd.grad(loss, list(net.parameters()))
    del grads
    assert train.live == 0 and train.peak > 0  # everything saved was freed by the backward pass
    net.eval()

    chunks = []
    real = _batching.chunk_rows

    def spy(rows, bytes_per_row, held_bytes):
        chunks.append((real(rows, bytes_per_row, held_bytes), bytes_per_row, held_bytes))
        return chunks[-1][0]

    monkeypatch.setattr(_batching, "chunk_rows", spy)
    explained = _LiveSaved(net)
    with explained.hooks():
        out = explain_detailed(net, probes, 1, n_steps=8, tolerance=tolerance, max_steps=33,
                               internal_batch_size=batch)
    assert explained.peak <= train.peak, (explained.peak, train.peak)
    assert chunks  # the rule ran
    for rows, bytes_per_row, held in chunks:
        # Activations of one chunk plus what the explanation holds fit in `batch` rows of activations (or one row
        # at least, when the held buffers alone take the budget).
        assert rows * bytes_per_row + held <= batch * bytes_per_row or rows == 1
    if tolerance is not None:
        assert out.ig_evals.max() > 8  # refinement ran, with node gradients held
        held = [h for _, _, h in chunks]
        assert max(held) > min(held)  # the stored node gradients are counted


def test_chunk_rows_rule():
    assert _batching.chunk_rows(64, 1000, 0) == 64
    assert _batching.chunk_rows(64, 1000, 1) == 63  # a partly taken row is taken
    assert _batching.chunk_rows(64, 1000, 12_000) == 52
    assert _batching.chunk_rows(64, 1000, 10**9) == 1


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


# ------------------------------------------------------------------------------- adaptive IG on flat/odd models


class _Kinked(torch.nn.Module):
    """Logits ``[0, 5 + scale * (relu(m) - 2 relu(m - 0.4))]`` with ``m = w . x``, ``w . x_probe = 1``: along the path
    the score rises, then falls back (kink at alpha = 0.4), so ``f(x) - f(b) = -0.2 scale``."""

    def __init__(self, probe: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.w = probe.flatten() / probe.flatten().pow(2).sum()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1) @ self.w
        score = 5 + self.scale * (m.relu() - 2 * (m - 0.4).relu())
        return torch.stack([torch.zeros_like(score), score], 1)


class _Step(torch.nn.Module):
    """A jump along the path that no quadrature node can resolve (the score steps by 3 where the mean crosses 0.5),
    plus ``slope`` times a linear term (``slope = 0``: the input gradient is zero everywhere)."""

    def __init__(self, slope: float = 0.0) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        w = torch.arange(1.0, x[0].numel() + 1)
        score = 3 * (m > 0.5).float() + self.slope * (x.flatten(1) @ w)
        return torch.stack([torch.zeros_like(score), score], 1)


def test_adaptive_ig_does_not_refine_flat_probes(monkeypatch):
    # |f(x) - f(b)| = 0.002 against a logit range of 5: its relative error is not a reason to refine.
    from lightning_xai.attribution import _engine

    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5

    def evals(scale: float) -> int:
        return int(explain_detailed(_Kinked(x, scale), x, 1, ("integrated_gradients",), n_steps=5, tolerance=0.02,
                                    max_steps=65).ig_evals.sum())

    assert evals(0.01) == 5
    assert evals(30.0) > 5  # a score that moves (|f(x) - f(b)| = 6) is refined as before
    monkeypatch.setattr(_engine, "FLAT_FRACTION", 0.0)  # the rule off: the flat probe refines too
    assert evals(0.01) > 5


def test_adaptive_ig_stops_when_refinement_stops_helping(monkeypatch):
    # The error of a jump does not shrink with more nodes: three rounds without progress stop the probe.
    x = torch.ones(2, 1, 2, 2)
    out = explain_detailed(_Step(0.1), x, 1, ("integrated_gradients",), n_steps=5, tolerance=0.01, max_steps=64)
    assert out.ig_relative_error.min() > 0.5  # the error is the model's, not the quadrature's
    assert out.ig_evals.max() <= 5 + 3
    from lightning_xai.attribution import _engine

    monkeypatch.setattr(_engine, "STALL_RATIO", float("inf"))
    assert explain_detailed(_Step(0.1), x, 1, ("integrated_gradients",), n_steps=5, tolerance=0.01,
                            max_steps=64).ig_evals.tolist() == [64, 64]


def test_adaptive_ig_does_not_refine_degenerate_maps():
    # A model whose input gradient is zero everywhere gives an all-zero map: nothing to refine towards.
    x = torch.randn(3, 1, 2, 2)
    out = explain_detailed(_Step(), x, 1, ("integrated_gradients",), n_steps=5, tolerance=0.01, max_steps=64)
    assert out.ig_evals.tolist() == [5, 5, 5]
