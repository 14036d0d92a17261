"""Saliency, Integrated Gradients and Grad-CAM computed by one engine that shares the work between them.

Every method is a set of *path points* ``(sample i, alpha)`` at which the model is evaluated on
``b_i + alpha * (x_i - b_i)`` and differentiated with ``torch.autograd.grad`` (never ``.backward()``, so parameter
``.grad`` is never touched):

- saliency is the input gradient at ``alpha = 1`` (the input itself);
- Grad-CAM uses the activation of one layer and its gradient at ``alpha = 1``;
- Integrated Gradients integrates the input gradient over ``alpha`` in ``[0, 1]`` with the trapezoid rule on
  ``n_steps`` equally spaced nodes that include both ends.

Because ``alpha = 1`` is a node of the trapezoid rule, ``explain`` gets saliency and Grad-CAM from the IG pass for
free, and ``alpha = 0`` gives ``f(baseline)`` for the completeness delta without an extra forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._validation import is_int as _is_int
from lightning_xai.attribution import _batching
from lightning_xai.attribution._layers import find_gradcam_layer, resolve_layer, unwrap_model
from lightning_xai.attribution._state import preserved_state

__all__ = [
    "METHODS",
    "Explanation",
    "explain",
    "explain_detailed",
    "grad_cam",
    "integrated_gradients",
    "saliency",
]

METHODS = ("grad_cam", "saliency", "integrated_gradients")
# Floor of the completeness denominator |f(x) - f(b)|, the same as lightning_xai.metrics.completeness.
_REL_EPS = 1e-4

OutputTransform = Callable[[Any], Tensor]


@dataclass
class Explanation:
    """Everything one :func:`explain_detailed` call computed.

    Attributes:
        maps: ``{method: map}`` in the order of ``methods``; ``grad_cam`` ``(N, 1, H, W)``, the others like the inputs.
        logits: ``(N, num_classes)`` model outputs (after ``output_transform``) at the real inputs, detached, float.
        ig_delta: ``(N,)`` completeness delta ``sum(attr_i) - (f(x_i) - f(b_i))``, or ``None`` without IG.
        ig_relative_error: ``(N,)`` ``|delta| / max(|f(x) - f(b)|, 1e-4)``, or ``None`` without IG.
        ig_evals: ``(N,)`` long, model evaluations (forward + input-gradient backward at one path point) each sample
            used for IG; ``n_steps`` everywhere unless ``tolerance`` refined some samples. ``None`` without IG.
        layer: the Grad-CAM layer's dotted name (relative to the unwrapped model), or ``None`` without Grad-CAM.
    """

    maps: dict[str, Tensor]
    logits: Tensor
    ig_delta: Tensor | None = None
    ig_relative_error: Tensor | None = None
    ig_evals: Tensor | None = None
    layer: str | None = None


# --------------------------------------------------------------------------------------------------- validation


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise ValueError(f"`inputs` must have shape (N, C, H, W) (rank 4), got rank {inputs.ndim} with shape "
                         f"{tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"`inputs` must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must hold at least one sample, got shape {tuple(inputs.shape)}")
    return inputs


def _check_target(target: Any, n: int) -> Tensor:
    if isinstance(target, bool) or not (_is_int(target) or isinstance(target, Tensor)):
        raise TypeError(f"`target` must be an int or a LongTensor of shape (N,), got {type(target).__name__}")
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"`target` must hold integer class indices, got dtype {target.dtype}")
        if target.ndim == 0:
            target = target.reshape(1).expand(n)
        elif target.ndim != 1 or target.shape[0] != n:
            raise ValueError(f"`target` must be an int or have shape ({n},) to match `inputs`, got shape "
                             f"{tuple(target.shape)}")
        bad = target < 0
        if bool(bad.any()):
            raise ValueError(f"`target` must hold class indices >= 0, got {int(target[bad][0])}")
        return target.detach()
    if target < 0:
        raise ValueError(f"`target` must be a class index >= 0, got {target}")
    return torch.full((n,), target, dtype=torch.long)


def _check_baseline(baseline: Any, inputs: Tensor) -> Tensor | float:
    if baseline is None:
        return 0.0
    if isinstance(baseline, bool):
        raise TypeError("`baseline` must be None, a number or a tensor, got bool")
    if isinstance(baseline, (int, float)):
        return float(baseline)
    if not isinstance(baseline, Tensor):
        raise TypeError(f"`baseline` must be None, a number or a tensor, got {type(baseline).__name__}")
    shape, per_sample = tuple(baseline.shape), tuple(inputs.shape[1:])
    if shape not in (tuple(inputs.shape), per_sample, (1, *per_sample)) and baseline.numel() != 1:
        raise ValueError(f"`baseline` must be a number or have shape {tuple(inputs.shape)}, {per_sample} or "
                         f"{(1, *per_sample)} to match `inputs`, got shape {shape}")
    return baseline


def _check_methods(methods: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError:
        raise TypeError(f"`methods` must be a sequence of method names from {METHODS}, got {methods!r}") from None
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ValueError(f"`methods` must be a non-empty sequence of distinct names from {METHODS}, got {methods!r}")
    return methods


def _check_options(n_steps: Any, internal_batch_size: Any, tolerance: Any, max_steps: Any, autocast_dtype: Any,
                   output_transform: Any) -> None:
    if not _is_int(n_steps) or n_steps < 1:
        raise ValueError(f"`n_steps` must be an int >= 1, got {n_steps!r}")
    if internal_batch_size is not None and (not _is_int(internal_batch_size) or internal_batch_size < 1):
        raise ValueError(f"`internal_batch_size` must be None (automatic) or an int >= 1, got {internal_batch_size!r}")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            tolerance > 0 and math.isfinite(tolerance)
        ):
            raise ValueError(f"`tolerance` must be None or a positive finite number, got {tolerance!r}")
        if n_steps < 2:
            raise ValueError(f"`n_steps` must be >= 2 when `tolerance` is set (the refined grid needs both ends), "
                             f"got {n_steps}")
        if not _is_int(max_steps) or max_steps < n_steps:
            raise ValueError(f"`max_steps` must be an int >= n_steps ({n_steps}), got {max_steps!r}")
    if autocast_dtype is not None and not (isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point):
        raise TypeError(f"`autocast_dtype` must be None or a floating torch.dtype, got {autocast_dtype!r}")
    if output_transform is not None and not callable(output_transform):
        raise TypeError(f"`output_transform` must be None or a callable, got {type(output_transform).__name__}")


# ------------------------------------------------------------------------------------------------------- engine


def _relative_error(delta: Tensor, f_x: Tensor, f_b: Tensor) -> Tensor:
    # Same rule as lightning_xai.metrics.completeness.relative_error (not imported: attribution stays standalone).
    return delta.abs() / (f_x - f_b).abs().clamp_min(_REL_EPS)


def _trapezoid(n_steps: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Nodes ordered ``[1, 0, interior ascending]`` and their trapezoid weights (``n_steps == 1``: the node 1)."""
    if n_steps == 1:
        return torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype)
    alphas = torch.linspace(0, 1, n_steps, dtype=dtype)
    weights = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
    weights[0] /= 2
    weights[-1] /= 2
    order = torch.cat([torch.tensor([n_steps - 1, 0]), torch.arange(1, n_steps - 1)])
    return alphas[order], weights[order].to(dtype)


class _Engine:
    """Evaluates path points in chunks and accumulates what each requested method needs."""

    def __init__(self, net: nn.Module, x: Tensor, baseline: Tensor, target: Tensor, *, cam_layer: nn.Module | None,
                 cam_name: str | None, output_transform: OutputTransform | None, internal_batch_size: int | None,
                 autocast_dtype: torch.dtype | None, channels_last: bool) -> None:
        self.net, self.x, self.b, self.target = net, x, baseline, target
        self.cam_layer, self.cam_name = cam_layer, cam_name
        self.output_transform = output_transform
        self.rows = internal_batch_size
        self.bytes_per_row: float | None = None  # autograd-saved bytes per path point, measured by the first chunk
        self.held_bytes: Callable[[], int] = lambda: 0  # bytes of the caller's buffers alive during the run
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.num_classes: int | None = None

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        # Always an explicit autocast context: enabled with the requested dtype, or disabled, so an ambient
        # autocast (e.g. fp16 from a training loop) cannot make gradients underflow (Captum #835).
        device_type = self.x.device.type
        if self.autocast_dtype is None:
            with torch.autocast(device_type=device_type, enabled=False):
                yield
        else:
            with torch.autocast(device_type=device_type, dtype=self.autocast_dtype):
                yield

    def _logits(self, out: Any, rows: int) -> Tensor:
        if self.output_transform is not None:
            out = self.output_transform(out)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, not a logits tensor (N, num_classes); pass "
                            "`output_transform`, e.g. `lambda out: out[0]` or `lambda out: out['logits']`")
        if out.ndim != 2 or out.shape[0] != rows:
            raise ValueError(f"the model output (after `output_transform`) must have shape ({rows}, num_classes), "
                             f"got {tuple(out.shape)}")
        if self.num_classes is None:
            self.num_classes = out.shape[1]
            top = int(self.target.max())
            if top >= self.num_classes:
                raise ValueError(f"`target` holds class index {top}, but the model has {self.num_classes} outputs "
                                 f"(valid: 0..{self.num_classes - 1})")
        return out.float()

    def points(self, idx: Tensor, alpha: Tensor) -> Tensor:
        x = self.x[idx]
        if bool((alpha == 1).all()):
            return x
        b = self.b[idx]
        xs = b + alpha.view(-1, 1, 1, 1) * (x - b)
        # alpha == 1 must be the input itself, bit for bit, so saliency / Grad-CAM equal the standalone functions.
        xs = torch.where((alpha == 1).view(-1, 1, 1, 1), x, xs)
        return xs

    def evaluate(self, idx: Tensor, alpha: Tensor, *, cam: bool, counter: _batching.SavedBytes | None = None
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Forward + ``autograd.grad`` at the given path points.

        Returns ``(logits (R, K) float, input grads (R, C, H, W), activation (R, k, h, w) | None, its grad | None)``.
        """
        xs = self.points(idx, alpha)
        if self.channels_last:
            # Only the input is converted (the weights are left alone: changing them is a side effect); convolutions
            # propagate the channels_last layout from their input.
            xs = xs.contiguous(memory_format=torch.channels_last)
        xs.requires_grad_(True)
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, Tensor):
                captured.append(output)
                # The rest of the network gets a clone: an in-place op after the layer (densenet's
                # F.relu(inplace=True)) would otherwise overwrite the activation we differentiate against.
                return output.clone()
            return None

        handle = self.cam_layer.register_forward_hook(hook) if cam and self.cam_layer is not None else None
        try:
            with self._autocast(), (counter.counting() if counter is not None else contextlib.nullcontext()):
                out = self.net(xs)
        finally:
            if handle is not None:
                handle.remove()
        logits = self._logits(out, xs.shape[0])
        scores = logits.gather(1, self.target[idx].unsqueeze(1)).squeeze(1)
        wrt = [xs]
        act = None
        if cam:
            if not captured:
                raise RuntimeError(f"Grad-CAM layer {self.cam_name!r} was not called during the forward pass")
            act = captured[-1]
            if act.ndim != 4:
                raise ValueError(f"`layer`={self.cam_name!r} must output a 4-D tensor (N, C, h, w) for Grad-CAM, got "
                                 f"shape {tuple(act.shape)}")
            if not act.requires_grad:
                raise RuntimeError(f"Grad-CAM layer {self.cam_name!r}'s output does not depend on the input")
            wrt.append(act)
        try:
            grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
        except RuntimeError as err:
            message = str(err).lower()
            if "checkpoint" in message and ".grad()" in message:  # wording differs across torch versions
                raise RuntimeError(
                    "the model uses reentrant gradient checkpointing (torch.utils.checkpoint with use_reentrant=True), "
                    "which cannot be differentiated with torch.autograd.grad (pytorch #51743). Use "
                    "use_reentrant=False, or disable checkpointing in eval mode."
                ) from err
            raise
        g_x = grads[0] if grads[0] is not None else torch.zeros_like(xs)
        g_a = None
        if cam:
            if grads[1] is None:
                raise RuntimeError(f"the target score does not depend on Grad-CAM layer {self.cam_name!r}")
            g_a = grads[1]
        return logits.detach(), g_x.detach(), None if act is None else act.detach(), g_a

    def run(self, idx: Tensor, alpha: Tensor, *, cam_rows: int, consume: Callable[..., None]) -> None:
        """Evaluate all points in chunks; the first ``cam_rows`` points also produce Grad-CAM quantities.

        The first chunk ever (at most :data:`_batching.PROBE_ROWS` rows) measures the bytes autograd saves per row.
        Later chunks hold ``rows`` rows (given, or automatic) minus the rows that the explanation's own buffers
        (``held_bytes()``: inputs, maps, adaptive IG's stored node gradients) already take, so the peak stays that of
        ``rows`` rows of activations (:func:`_batching.chunk_rows`).
        """
        total, start = idx.shape[0], 0
        while start < total:
            counter = None
            remaining = total - start
            if self.bytes_per_row is None:
                size = min(_batching.PROBE_ROWS, remaining, self.rows or _batching.PROBE_ROWS)
                counter = _batching.SavedBytes(self.net)
            else:
                assert self.rows is not None  # set with bytes_per_row
                rows = _batching.chunk_rows(self.rows, self.bytes_per_row, self.held_bytes())
                # Balanced chunks: 1000 rows at <= 64 per chunk run as 16 chunks of 62-63, not 15 x 64 + one of 40.
                size = -(-remaining // -(-remaining // rows))
            sl = slice(start, start + size)
            cam = start < cam_rows
            logits, g_x, act, g_a = self.evaluate(idx[sl], alpha[sl], cam=cam, counter=counter)
            consume(sl, logits, g_x, act, g_a)
            if counter is not None:
                self.bytes_per_row = counter.bytes / size
                if self.rows is None:
                    self.rows = _batching.auto_rows(self.bytes_per_row, self.x.device)
            start += size

    def forward_scores(self, inputs: Tensor) -> Tensor:
        """Target scores without gradients (for ``f(baseline)`` when alpha = 0 is not a node)."""
        out = []
        step = self.rows or _batching.PROBE_ROWS
        with torch.no_grad(), self._autocast():
            for start in range(0, inputs.shape[0], step):
                chunk = inputs[start:start + step]
                logits = self._logits(self.net(chunk), chunk.shape[0])
                out.append(logits.gather(1, self.target[start:start + step].unsqueeze(1)).squeeze(1))
        return torch.cat(out)



class _AdaptivePaths:
    """The nodes of every sample's IG path for adaptive refinement, and where to refine them.

    Each node ``alpha`` of sample ``i`` stores the target score ``f_j``, the path derivative ``g_j = grad f . (x - b)``
    (a scalar) and the input gradient (a map). On the interval ``[a_j, a_{j+1}]`` the completeness residual

        ``r_j = (f_{j+1} - f_j) - (a_{j+1} - a_j) / 2 * (g_j + g_{j+1})``

    is what the trapezoid rule misses there (``sum_j r_j = -delta``), at no extra cost: ``f`` is known at every node.
    For a ReLU network ``f`` is piecewise linear along the path, so ``r_j`` is exactly zero on intervals without a
    kink and refinement only needs to go where the kinks are. Each round, every sample whose relative completeness
    error exceeds the tolerance bisects its intervals with ``|r_j| >= REFINE_FRACTION * max |r|`` (largest first,
    within ``max_steps`` nodes). The result is the trapezoid rule on the final, non-uniform nodes, so the sum rule
    ``sum(attr) = f(x) - f(b) + delta`` holds as for fixed steps.

    Refining an interval changes its end nodes' weights, which is why the node gradients are kept; a sample's nodes
    are dropped as soon as it is done (within tolerance, at ``max_steps``, or nothing left to refine).
    """

    REFINE_FRACTION = 0.5

    def __init__(self, x_minus_b: Tensor, target: Tensor) -> None:
        self.diff = x_minus_b
        self.target = target
        self.n = x_minus_b.shape[0]
        self.count = torch.zeros(self.n, dtype=torch.long, device=x_minus_b.device)
        self.start_count: Tensor | None = None
        self.active = torch.ones(self.n, dtype=torch.bool, device=x_minus_b.device)
        self.sample: list[Tensor] = []
        self.alpha: list[Tensor] = []
        self.f: list[Tensor] = []
        self.g: list[Tensor] = []
        self.grads: list[Tensor] = []

    def add(self, idx: Tensor, alpha: Tensor, logits: Tensor, g_x: Tensor) -> None:
        self.count.index_add_(0, idx, torch.ones_like(idx))
        self.sample.append(idx)
        self.alpha.append(alpha.double())
        self.f.append(logits.gather(1, self.target[idx].unsqueeze(1)).squeeze(1).double())
        self.g.append((g_x.double() * self.diff[idx].double()).flatten(1).sum(1))
        self.grads.append(g_x)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.grads)

    def _sorted(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        sample, alpha = torch.cat(self.sample), torch.cat(self.alpha)
        order = torch.argsort(sample.double() * 2 + alpha)  # by sample, then alpha (alpha in [0, 1])
        return order, sample[order], alpha[order], torch.cat(self.f)[order], torch.cat(self.g)[order]

    def _keep(self, keep_samples: Tensor) -> None:
        rows = keep_samples[torch.cat(self.sample)]
        for name in ("sample", "alpha", "f", "g", "grads"):
            setattr(self, name, [torch.cat(getattr(self, name))[rows]])

    def refined(self) -> Tensor:
        """``(N,)`` bool: samples with more nodes than the first pass gave them."""
        return self.count > (self.start_count if self.start_count is not None else self.count)

    def refinement(self, need: Tensor, max_steps: int) -> tuple[Tensor, Tensor]:
        """The next round's path points ``(sample index, alpha)`` for the samples in ``need``; empty when done."""
        if self.start_count is None:
            self.start_count = self.count.clone()
        need = need & self.active & (self.count < max_steps)
        if not bool(need.all()) and self.sample:
            self.active &= need  # a sample that needs nothing now never will: its integral is final
            self._keep(self.active)
        if not bool(need.any()):
            return torch.zeros(0, dtype=torch.long, device=need.device), self.diff.new_zeros(0)
        _, sample, alpha, f, g = self._sorted()
        same = sample[1:] == sample[:-1]
        s_int = sample[:-1][same]
        a_lo, a_hi = alpha[:-1][same], alpha[1:][same]
        h = a_hi - a_lo
        resid = (f[1:] - f[:-1])[same] - h / 2 * (g[1:] + g[:-1])[same]
        score = resid.abs()
        top = torch.zeros(self.n, dtype=torch.float64, device=score.device).scatter_reduce_(
            0, s_int, score, "amax", include_self=True)
        pick = need[s_int] & (score >= self.REFINE_FRACTION * top[s_int]) & (score > 0)
        cand = pick.nonzero().squeeze(1)
        # Largest residuals first, then at most max_steps - count new nodes per sample.
        cand = cand[torch.argsort(score[cand], descending=True, stable=True)]
        cand = cand[torch.argsort(s_int[cand], stable=True)]
        cs = s_int[cand]
        first = torch.ones_like(cs, dtype=torch.bool)
        first[1:] = cs[1:] != cs[:-1]
        position = torch.arange(cs.numel(), device=cs.device)
        rank = position - torch.cummax(torch.where(first, position, 0), 0).values
        cand = cand[rank < (max_steps - self.count[cs])]
        stuck = need.clone()
        stuck[s_int[cand]] = False
        self.active &= ~stuck  # needs refining but every residual is zero: nothing left to do
        return s_int[cand], ((a_lo[cand] + a_hi[cand]) / 2).to(self.diff.dtype)

    def integral(self, dtype: torch.dtype) -> Tensor:
        """Trapezoid rule on every kept sample's nodes, ``sum_j (h_{j-1} + h_j) / 2 * grad_j`` (zero elsewhere)."""
        order, sample, alpha, _, _ = self._sorted()
        weight = torch.zeros_like(alpha)
        same = sample[1:] == sample[:-1]
        half = torch.where(same, (alpha[1:] - alpha[:-1]) / 2, torch.zeros_like(alpha[1:]))
        weight[:-1] += half
        weight[1:] += half
        grads = torch.cat(self.grads)[order]
        out = torch.zeros_like(self.diff)
        out.index_add_(0, sample, (grads * weight.view(-1, 1, 1, 1).to(grads.dtype)).to(dtype))
        return out


def _grad_cam_map(act: Tensor, grad: Tensor, size: Sequence[int], dtype: torch.dtype) -> Tensor:
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = (weights * act.float()).sum(dim=1, keepdim=True).relu()
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False).to(dtype)


def _attribute(model: nn.Module, inputs: Tensor, target: Any, methods: tuple[str, ...], *, layer: Any,
               baseline: Any, n_steps: int, internal_batch_size: int | None, output_transform: Any,
               tolerance: float | None, max_steps: int, autocast_dtype: torch.dtype | None,
               channels_last: bool) -> Explanation:
    inputs = _check_inputs(inputs)
    n = inputs.shape[0]
    target = _check_target(target, n)
    methods = _check_methods(methods)
    do_ig, do_sal, do_cam = ("integrated_gradients" in methods, "saliency" in methods, "grad_cam" in methods)
    if do_ig:
        baseline = _check_baseline(baseline, inputs)
    _check_options(n_steps, internal_batch_size, tolerance if do_ig else None, max_steps, autocast_dtype,
                   output_transform)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    net = unwrap_model(model)
    device, dtype = inputs.device, inputs.dtype
    with preserved_state(model):
        # Clone inside inference_mode(False): inputs / targets made under inference_mode (Lightning's validation
        # loop) cannot be saved for backward (PITFALLS 20).
        x = inputs.detach().clone()
        tgt = target.to(device).clone()
        if do_ig and isinstance(baseline, Tensor):
            b = baseline.detach().to(device=device, dtype=dtype).clone().expand_as(x)
        else:
            b = torch.full_like(x, baseline if do_ig else 0.0)
        cam_name = cam_module = None
        if do_cam:
            if layer is None:
                layer = find_gradcam_layer(net, x[:1])
            cam_name, cam_module = resolve_layer(net, layer)
        engine = _Engine(net, x, b, tgt, cam_layer=cam_module, cam_name=cam_name, output_transform=output_transform,
                         internal_batch_size=internal_batch_size, autocast_dtype=autocast_dtype,
                         channels_last=channels_last)

        if do_ig:
            alphas, weights = _trapezoid(n_steps, dtype)
        else:
            alphas, weights = torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype)
        k = alphas.shape[0]
        # alpha-major order: all samples at alpha = 1 first (Grad-CAM/saliency rows), then alpha = 0, then interior.
        idx = torch.arange(n, device=device).repeat(k)
        alpha = alphas.to(device).repeat_interleave(n)
        weight = weights.to(device).repeat_interleave(n)

        logits_x = torch.empty(n, 0, device=device)
        saliency_map = torch.zeros_like(x) if do_sal else None
        cam_map = torch.zeros(n, 1, *x.shape[-2:], dtype=dtype, device=device) if do_cam else None
        integral = torch.zeros_like(x) if do_ig else None
        f_b = torch.zeros(n, device=device)
        # Adaptive IG keeps every node's (target score, input gradient): refining an interval changes its end nodes'
        # trapezoid weights, which needs their gradients again (see _AdaptivePaths).
        paths = _AdaptivePaths(x - b, tgt) if do_ig and tolerance is not None else None

        def held_bytes() -> int:
            buffers = (x, b, integral, saliency_map, cam_map, None if paths is None else paths.diff)
            held = sum(t.untyped_storage().nbytes() for t in buffers if t is not None)
            return held + (paths.nbytes() if paths is not None else 0)

        engine.held_bytes = held_bytes

        def consume(sl: slice, logits: Tensor, g_x: Tensor, act: Tensor | None, g_a: Tensor | None) -> None:
            nonlocal logits_x
            rows_idx, rows_alpha = idx[sl], alpha[sl]
            if logits_x.shape[1] == 0:
                logits_x = torch.zeros(n, logits.shape[1], device=device)
            at_x = rows_alpha == 1
            if bool(at_x.any()):
                logits_x[rows_idx[at_x]] = logits[at_x]
                if saliency_map is not None:
                    saliency_map[rows_idx[at_x]] = g_x[at_x].to(dtype)
                if cam_map is not None and act is not None and g_a is not None:
                    cam_map[rows_idx[at_x]] = _grad_cam_map(act[at_x], g_a[at_x], x.shape[-2:], dtype)
            if integral is not None:
                at_b = rows_alpha == 0
                if bool(at_b.any()):
                    f_b[rows_idx[at_b]] = logits[at_b].gather(1, tgt[rows_idx[at_b]].unsqueeze(1)).squeeze(1)
                w = weight[sl].view(-1, 1, 1, 1).to(g_x.dtype)
                integral.index_add_(0, rows_idx, (g_x * w).to(dtype))
            if paths is not None:
                paths.add(rows_idx, rows_alpha, logits, g_x)

        engine.run(idx, alpha, cam_rows=n if do_cam else 0, consume=consume)

        maps: dict[str, Tensor] = {}
        result = Explanation(maps=maps, logits=logits_x, layer=cam_name)
        if do_ig:
            assert integral is not None  # for type checkers; set above when do_ig
            if n_steps == 1:
                f_b = engine.forward_scores(b)
            f_x = logits_x.gather(1, tgt.unsqueeze(1)).squeeze(1)
            evals = torch.full((n,), n_steps, dtype=torch.long, device=device)

            def completeness() -> tuple[Tensor, Tensor, Tensor]:
                attr = (x - b) * integral
                delta = attr.flatten(1).sum(1).float() - (f_x - f_b)
                return attr, delta, _relative_error(delta, f_x, f_b)

            attr, delta, rel = completeness()
            if paths is not None:
                assert tolerance is not None
                while True:
                    ref_idx, ref_alpha = paths.refinement(rel > tolerance, max_steps)
                    if ref_idx.numel() == 0:
                        break
                    engine.run(ref_idx, ref_alpha, cam_rows=0,
                               consume=lambda sl, logits, g_x, *_, i=ref_idx, a=ref_alpha: paths.add(
                                   i[sl], a[sl], logits, g_x))
                    # The samples refined in this round get the trapezoid rule on their non-uniform nodes; samples
                    # never refined keep the streamed fixed-step integral bit for bit.
                    now = torch.zeros(n, dtype=torch.bool, device=device)
                    now[ref_idx] = True
                    integral[now] = paths.integral(dtype)[now]
                    attr, delta, rel = completeness()
                evals = paths.count.clone()
                paths = None  # frees the stored node gradients
            maps_ig = attr
            result.ig_delta, result.ig_relative_error, result.ig_evals = delta.detach(), rel.detach(), evals
        for m_name in methods:
            if m_name == "saliency":
                assert saliency_map is not None
                maps[m_name] = saliency_map
            elif m_name == "grad_cam":
                assert cam_map is not None
                maps[m_name] = cam_map
            else:
                maps[m_name] = maps_ig.detach()
        return result


# ------------------------------------------------------------------------------------------------------ public API


def explain_detailed(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    methods: Sequence[str] = METHODS,
    *,
    layer: str | nn.Module | None = None,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Explanation:
    """Several attribution methods in one pass, with logits and IG diagnostics.

    The methods share the work: Integrated Gradients evaluates the model on ``n_steps`` path points per sample, one
    of which (``alpha = 1``) is the input itself; the saliency gradient and Grad-CAM's activation and gradient are
    taken there. The whole bundle costs about what IG alone costs (measured in ``bench/attribution.py``). Without
    IG, one forward and one ``autograd.grad`` at the inputs serve saliency and Grad-CAM together.

    Args:
        model: an image classifier; ``torch.compile`` / DataParallel wrappers are unwrapped (hooks need the eager
            module). Runs under :func:`preserved_state`: eval mode, gradients on, nothing about the model or RNG
            changes; parameter ``.grad`` is never touched.
        inputs: a batch of images; may be an inference tensor.
        target: the class to explain: an int for all samples or one per sample.
        methods: any of ``"grad_cam"``, ``"saliency"``, ``"integrated_gradients"`` (a single name is accepted).
        layer: Grad-CAM layer (dotted name or module); ``None`` picks one with :func:`find_gradcam_layer`.
        baseline: IG baseline: ``None`` (zeros), a number, or a tensor shaped like ``inputs`` or one sample.
        n_steps: IG nodes per sample (trapezoid rule including both ends; 1 means gradient x (input - baseline)).
        internal_batch_size: path points per forward/backward; ``None`` chooses from available memory (see
            :func:`integrated_gradients`).
        output_transform: maps the model's output to logits ``(N, num_classes)`` (tuple/dict/dataclass outputs).
        tolerance: adaptive IG: refine the samples whose completeness relative error exceeds this (see
            :func:`integrated_gradients`).
        max_steps: adaptive IG: no sample is refined beyond this many nodes.
        autocast_dtype: run the model's forward under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``);
            maps are returned in the inputs' dtype. ``None`` disables any ambient autocast.
        channels_last: feed the model ``channels_last`` inputs (faster convolutions on GPUs).

    Returns:
        An :class:`Explanation`.

    Raises:
        ValueError: bad shapes or values (the message names the argument); see the single-method functions.
        TypeError: wrong argument types, or a model output that is not a tensor without ``output_transform``.
        RuntimeError: Grad-CAM layer problems, reentrant gradient checkpointing.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - maps: ``grad_cam`` ``(N, 1, H, W)``; ``saliency`` and ``integrated_gradients`` ``(N, C, H, W)``
        - logits: ``(N, num_classes)``; ig_delta, ig_relative_error, ig_evals: ``(N,)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> out = explain_detailed(net, torch.randn(2, 3, 8, 8), target=1, n_steps=8)
        >>> sorted(out.maps), tuple(out.maps["grad_cam"].shape), out.ig_evals.tolist()
        (['grad_cam', 'integrated_gradients', 'saliency'], (2, 1, 8, 8), [8, 8])
    """
    return _attribute(model, inputs, target, tuple(methods) if not isinstance(methods, str) else methods,
                      layer=layer, baseline=baseline, n_steps=n_steps, internal_batch_size=internal_batch_size,
                      output_transform=output_transform, tolerance=tolerance, max_steps=max_steps,
                      autocast_dtype=autocast_dtype, channels_last=channels_last)


def explain(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    methods: Sequence[str] = METHODS,
    *,
    layer: str | nn.Module | None = None,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Tensor]:
    """Several attribution methods at once, sharing work; only the maps of :func:`explain_detailed`.

    Each map equals what the single-method function returns for the same arguments.

    Args:
        model, inputs, target, methods, layer, baseline, n_steps, internal_batch_size, output_transform, tolerance,
        max_steps, autocast_dtype, channels_last: as in :func:`explain_detailed`.

    Returns:
        ``{method: map}`` in the order of ``methods``; detached, on the inputs' device.

    Shape:
        - inputs: ``(N, C, H, W)``
        - output: ``grad_cam`` ``(N, 1, H, W)``; ``saliency`` and ``integrated_gradients`` ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> maps = explain(net, torch.randn(2, 3, 8, 8), target=torch.tensor([0, 1]), n_steps=4)
        >>> {k: tuple(v.shape) for k, v in maps.items()}
        {'grad_cam': (2, 1, 8, 8), 'saliency': (2, 3, 8, 8), 'integrated_gradients': (2, 3, 8, 8)}
    """
    return explain_detailed(model, inputs, target, methods, layer=layer, baseline=baseline, n_steps=n_steps,
                            internal_batch_size=internal_batch_size, output_transform=output_transform,
                            tolerance=tolerance, max_steps=max_steps, autocast_dtype=autocast_dtype,
                            channels_last=channels_last).maps


def saliency(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    output_transform: OutputTransform | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Vanilla gradient: the raw, signed gradient of the target score w.r.t. the input.

    Equal to Captum's ``Saliency(model).attribute(inputs, target, abs=False)``.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; ``None`` disables ambient autocast.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The gradient, detached, in the inputs' dtype and device.

    Raises:
        ValueError: ``inputs`` not rank 4, ``target`` of the wrong length or out of range.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> sal = saliency(net, torch.randn(1, 1, 2, 2), target=1)
        >>> torch.equal(sal.flatten(), net[1].weight[1])
        True
    """
    return explain_detailed(model, inputs, target, ("saliency",), output_transform=output_transform,
                            autocast_dtype=autocast_dtype, channels_last=channels_last).maps["saliency"]


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    layer: str | nn.Module | None = None,
    output_transform: OutputTransform | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Grad-CAM: ``relu(sum_k alpha_k A_k)``, bilinearly upsampled to the input size, not normalised.

    ``A`` is the output of ``layer`` at the input and ``alpha_k`` the spatial mean of the gradient of the target
    score w.r.t. channel ``k`` of ``A``. The activation is captured by a forward hook that lives for this call only
    (removed in ``finally``); the rest of the network receives a clone of it, so an in-place op after the layer
    cannot corrupt it. The gradient comes from ``torch.autograd.grad`` w.r.t. that activation. Equal to Captum's
    ``LayerGradCam(..., relu_attributions=True)`` followed by ``LayerAttribution.interpolate(..., "bilinear")``.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        layer: a dotted module name or a module; ``None`` picks the last 4-D output before the head
            (:func:`find_gradcam_layer`). For a module called several times, its last call is used.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; the map is computed in fp32.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The non-negative map, detached, in the inputs' dtype and device.

    Raises:
        ValueError: bad inputs/target, an unknown layer name (candidates listed), a layer without a 4-D output.
        RuntimeError: no 4-D layer to pick automatically; a layer that is not called or not on the target's path.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, 1, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> tuple(grad_cam(net, torch.randn(2, 3, 8, 8), target=0, layer="1").shape)
        (2, 1, 8, 8)
    """
    return explain_detailed(model, inputs, target, ("grad_cam",), layer=layer, output_transform=output_transform,
                            autocast_dtype=autocast_dtype, channels_last=channels_last).maps["grad_cam"]


def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    return_delta: bool = False,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated Gradients ``(x - b) * integral_0^1 grad f(b + alpha (x - b)) d alpha``.

    Quadrature: the trapezoid rule on ``n_steps`` equally spaced nodes ``alpha = 0, 1/(n-1), ..., 1`` (both ends
    included, weights ``1/(n-1)``, halved at the ends). It is exact for linear models, second-order accurate for
    smooth ones, has ``alpha = 1`` as a node (so :func:`explain` gets saliency and Grad-CAM for free) and ``alpha =
    0`` (so ``f(b)`` for the delta costs nothing), and bisecting an interval reuses its end nodes (adaptive mode).
    ``n_steps = 1`` is the single node ``alpha = 1``: gradient x (input - baseline). Note: Captum's
    ``method="riemann_trapezoid"`` uses the same nodes but weights ``1/n`` instead of ``1/(n-1)``, so its
    attributions are ours times ``(n-1)/n`` and miss completeness by that factor.

    Adaptive mode (``tolerance`` set): after the first ``n_steps`` nodes, every sample whose completeness relative
    error ``|delta| / max(|f(x) - f(b)|, 1e-4)`` exceeds ``tolerance`` is refined where its error is: on each interval
    ``[a_j, a_{j+1}]`` of its path, ``r_j = (f(a_{j+1}) - f(a_j)) - (a_{j+1} - a_j) (g_j + g_{j+1}) / 2`` (with
    ``g = grad f . (x - b)``) is the part of the completeness error made there (``sum_j r_j = -delta``; free, since
    ``f`` is known at every node), and each round bisects the intervals with ``|r_j| >= 0.5 max |r|``, until the
    sample meets the tolerance or has ``max_steps`` nodes. A ReLU network is piecewise linear along the path, so
    ``r_j`` is zero where there is no kink and the new nodes go where the kinks are. The result is the trapezoid rule
    on each sample's final, non-uniform nodes (sum rule as above); a sample within tolerance after the first pass
    keeps exactly the fixed-step result. :attr:`Explanation.ig_evals` reports the nodes per sample. Measured in
    ``bench/adaptive_ig.py``: the worst-case error of fixed 65 steps at 0.20x its evaluations (from 9 nodes). The
    criterion is completeness, a scalar: a map can still differ from the converged one more than that of a fixed
    run with the same worst-case completeness error (the bench prints both). Memory: the node gradients are kept
    (one image per evaluation) until a sample is done, and count against ``internal_batch_size`` (below).

    ``internal_batch_size=None`` (automatic): the first forward pass (16 path points at most) measures the bytes
    autograd saves per point; then ``rows = budget // (3 * bytes_per_point)``, with budget half of the free CUDA
    memory, or on CPU a quarter of the available RAM capped at 2 GiB; clamped to at most 2048 rows on CUDA and 64 on
    CPU (where larger batches are not faster). Given or automatic, ``internal_batch_size`` rows of saved activations
    are the memory budget of one chunk, and the explanation's own buffers (inputs, maps, stored node gradients) take
    their share of it, so at ``internal_batch_size=B`` the peak stays that of a training step at batch ``B``
    (``bench/memory.py``); the first chunk holds at most 16 rows to measure the bytes per row.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        baseline: ``None`` (zeros), a number, or a tensor shaped like ``inputs`` or like one sample.
        n_steps: nodes per sample, >= 1 (>= 2 with ``tolerance``).
        internal_batch_size: path points per forward/backward at most (a memory budget, see above); ``None``:
            automatic. Results do not depend on it beyond float rounding.
        return_delta: also return the completeness delta.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        tolerance: adaptive mode's target relative completeness error (e.g. ``0.02``); ``None`` for fixed steps.
        max_steps: adaptive mode's cap on nodes per sample.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; attributions in the inputs' dtype.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The attributions, or ``(attributions, delta)`` with ``delta[i] = attributions[i].sum() - (f(x_i) - f(b_i))``.

    Raises:
        ValueError: bad inputs/target/baseline shape, ``n_steps < 1``, bad ``tolerance`` / ``max_steps``.

    Shape:
        - inputs: ``(N, C, H, W)``; baseline: ``(N, C, H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, C, H, W)``; delta ``(N,)``

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> attr, delta = integrated_gradients(net, torch.randn(3, 1, 2, 2), 0, n_steps=4, return_delta=True)
        >>> bool(delta.abs().max() < 1e-5)
        True
    """
    out = explain_detailed(model, inputs, target, ("integrated_gradients",), baseline=baseline, n_steps=n_steps,
                           internal_batch_size=internal_batch_size, output_transform=output_transform,
                           tolerance=tolerance, max_steps=max_steps, autocast_dtype=autocast_dtype,
                           channels_last=channels_last)
    attr = out.maps["integrated_gradients"]
    if return_delta:
        assert out.ig_delta is not None
        return attr, out.ig_delta
    return attr
