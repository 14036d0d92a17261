"""The shared pass and the batched evaluation every method runs on.

:class:`_Engine` evaluates the model on batches of points in chunks (forward + ``torch.autograd.grad``, never
``.backward()``, so parameter ``.grad`` is never touched), with the chunk size chosen from measured memory
(:mod:`._batching`). :func:`shared_pass` serves the requests of all chosen methods at once:

- the input gradient and the activations/gradients of CAM layers are taken at the inputs;
- Integrated Gradients evaluates ``b_i + alpha * (x_i - b_i)`` on the trapezoid nodes, of which ``alpha = 1`` is
  the input itself (so the above cost nothing more) and ``alpha = 0`` gives ``f(baseline)`` for the completeness
  delta without an extra forward.

:class:`Context` gives methods with passes of their own (noise, occlusion, masks, a modified backward) the same
chunked evaluation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.attribution import _batching
from lightning_xai.attribution._layers import gradcam_layer, resolve_layer

OutputTransform = Callable[[Any], Tensor]
# Floor of the completeness denominator |f(x) - f(b)|, the same as lightning_xai.metrics.completeness.
REL_EPS = 1e-4
# Adaptive IG: a probe whose |f(x) - f(b)| is below this fraction of its logit range is "flat" for the stopping rule.
FLAT_FRACTION = 0.02
# Adaptive IG: a probe whose error was not cut below STALL_RATIO of the previous round's in STALL_ROUNDS rounds in a
# row stops (its error comes from the model, e.g. a jump or kinks everywhere, not from too few nodes).
STALL_RATIO = 0.8
STALL_ROUNDS = 3


# --------------------------------------------------------------------------------------------------- validation


def check_inputs(inputs: Any) -> Tensor:
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


def check_target(target: Any, n: int) -> Tensor:
    is_int = isinstance(target, int) and not isinstance(target, bool)
    if isinstance(target, bool) or not (is_int or isinstance(target, Tensor)):
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


def baseline_tensor(baseline: Any, x: Tensor, name: str = "baseline") -> Tensor:
    """``baseline`` (None, a number, or a tensor like ``x`` / one sample) as a tensor shaped like ``x``."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    shape, per_sample = tuple(baseline.shape), tuple(x.shape[1:])
    if shape not in (tuple(x.shape), per_sample, (1, *per_sample)) and baseline.numel() != 1:
        raise ValueError(f"`{name}` must be a number or have shape {tuple(x.shape)}, {per_sample} or "
                         f"{(1, *per_sample)} to match `inputs`, got shape {shape}")
    return baseline.detach().to(device=x.device, dtype=x.dtype).clone().expand_as(x)


def relative_error(delta: Tensor, f_x: Tensor, f_b: Tensor) -> Tensor:
    # Same rule as lightning_xai.metrics.completeness.relative_error (not imported: attribution stays standalone).
    return delta.abs() / (f_x - f_b).abs().clamp_min(REL_EPS)


def trapezoid(n_steps: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Nodes ordered ``[1, 0, interior ascending]`` and their trapezoid weights (``n_steps == 1``: the node 1)."""
    if n_steps == 1:
        return torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype)
    alphas = torch.linspace(0, 1, n_steps, dtype=dtype)
    weights = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
    weights[0] /= 2
    weights[-1] /= 2
    order = torch.cat([torch.tensor([n_steps - 1, 0]), torch.arange(1, n_steps - 1)])
    return alphas[order], weights[order].to(dtype)


# ------------------------------------------------------------------------------------------- modified backward


class _GuidedReLU(torch.autograd.Function):
    """``relu`` whose backward passes only positive gradients where the input was positive (guided backprop)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre)
        return pre.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (pre,) = ctx.saved_tensors
        return grad.clamp_min(0) * (pre > 0).to(grad.dtype)


class _DeconvReLU(torch.autograd.Function):
    """``relu`` whose backward is ``relu(grad)``, whatever the input's sign (deconvnet)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor) -> Tensor:  # type: ignore[override]
        return pre.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.clamp_min(0)


_RELU_RULES = {"guided": _GuidedReLU, "deconv": _DeconvReLU}


@contextlib.contextmanager
def modified_relu(net: nn.Module, mode: str) -> Iterator[None]:
    """Replace the backward of every ``nn.ReLU`` module of ``net`` for the duration of the block.

    A forward pre-hook keeps the ReLU's input (a clone for ``inplace=True``, taken before the in-place op); a forward
    hook returns ``rule.apply(input)``, equal in value to the module's output, so the rest of the network is unchanged
    while the gradient flows through the rule. The hooks are removed in ``finally``; the modules' attributes are never
    changed. Functional ``F.relu`` / ``torch.relu`` calls inside ``forward`` cannot be hooked and keep their normal
    backward.
    """
    rule = _RELU_RULES[mode]
    stacks: dict[int, list[Tensor]] = {}
    handles = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        inp = args[0]
        stacks.setdefault(id(module), []).append(inp.clone() if getattr(module, "inplace", False) else inp)

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        pre = stacks[id(module)].pop()
        return rule.apply(pre)

    try:
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------------ engine


class LayerError(RuntimeError):
    """A CAM layer could not be used (not called, not spatial, output without gradient)."""


@dataclass
class LayerCapture:
    """One CAM layer at the inputs: raw activation and its gradient (or why they are unavailable)."""

    name: str
    module: nn.Module | None
    acts: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    error: BaseException | None = None

    def get(self) -> tuple[Tensor, Tensor]:
        if self.error is not None:
            raise self.error
        return torch.cat(self.acts), torch.cat(self.grads)


class _Engine:
    """Evaluates batches of points in chunks: the model, its output transform, autocast, layout, chunk size."""

    def __init__(self, net: nn.Module, *, output_transform: OutputTransform | None, internal_batch_size: int | None,
                 autocast_dtype: torch.dtype | None, channels_last: bool, device: torch.device) -> None:
        self.net = net
        self.output_transform = output_transform
        self.rows = internal_batch_size
        self.bytes_per_row: float | None = None  # autograd-saved bytes per point, measured by the first chunk
        self.held_bytes: Callable[[], int] = lambda: 0  # bytes of the caller's buffers alive during the run
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.device = device
        self.num_classes: int | None = None
        self.max_target = -1

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        # Always an explicit autocast context: enabled with the requested dtype, or disabled, so an ambient
        # autocast (e.g. fp16 from a training loop) cannot make gradients underflow (Captum #835).
        if self.autocast_dtype is None:
            with torch.autocast(device_type=self.device.type, enabled=False):
                yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                yield

    def logits(self, out: Any, rows: int, target: Tensor) -> Tensor:
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
        top = int(target.max())
        if top > self.max_target:
            if top >= self.num_classes:
                raise ValueError(f"`target` holds class index {top}, but the model has {self.num_classes} outputs "
                                 f"(valid: 0..{self.num_classes - 1})")
            self.max_target = top
        return out.float()

    def evaluate(self, xs: Tensor, target: Tensor, *, layers: dict[int, LayerCapture] | None = None,
                 relu_mode: str | None = None, counter: _batching.SavedBytes | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Forward + ``autograd.grad`` at ``xs``; layer activations/gradients go into ``layers``' captures.

        Returns ``(logits (R, K) float, input grads like xs)``, detached.
        """
        if self.channels_last:
            # Only the input is converted (the weights are left alone: changing them is a side effect); convolutions
            # propagate the channels_last layout from their input.
            xs = xs.contiguous(memory_format=torch.channels_last)
        xs.requires_grad_(True)
        layers = layers or {}
        captured: dict[int, list[Tensor]] = {key: [] for key in layers}

        def make_hook(key: int):
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                if isinstance(output, Tensor):
                    captured[key].append(output)
                    # The rest of the network gets a clone: an in-place op after the layer (densenet's
                    # F.relu(inplace=True)) would otherwise overwrite the activation we differentiate against.
                    return output.clone()
                return None

            return hook

        handles = []
        try:
            for key, cap in layers.items():
                if cap.error is None and cap.module is not None:
                    handles.append(cap.module.register_forward_hook(make_hook(key)))
            with contextlib.ExitStack() as stack:
                if relu_mode is not None:
                    stack.enter_context(modified_relu(self.net, relu_mode))
                stack.enter_context(self.autocast())
                if counter is not None:
                    stack.enter_context(counter.counting())
                out = self.net(xs)
        finally:
            for handle in handles:
                handle.remove()
        logits = self.logits(out, xs.shape[0], target)
        scores = logits.gather(1, target.unsqueeze(1)).squeeze(1)
        keys = _differentiable_layers(layers, captured)
        grads = _grad(scores, [xs, *(captured[key][-1] for key in keys)])
        g_x = grads[0] if grads[0] is not None else torch.zeros_like(xs)
        for key, g_a in zip(keys, grads[1:]):
            cap = layers[key]
            if g_a is None:
                cap.error = LayerError(f"the target score does not depend on CAM layer {cap.name!r}")
            else:
                cap.acts.append(captured[key][-1].detach())
                cap.grads.append(g_a.detach())
        return logits.detach(), g_x.detach()

    def forward_logits(self, xs: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad(), self.autocast():
            if self.channels_last:
                xs = xs.contiguous(memory_format=torch.channels_last)
            return self.logits(self.net(xs), xs.shape[0], target)

    def stream(self, total: int, make: Callable[[slice], tuple[Tensor, Tensor]],
               consume: Callable[[slice, Tensor, Tensor | None], None], *, grad: bool = True,
               layer_rows: int = 0, layers: dict[int, LayerCapture] | None = None,
               relu_mode: str | None = None) -> None:
        """Evaluate ``total`` points in chunks: ``make(sl) -> (points, targets)``, ``consume(sl, logits, grads)``.

        The first gradient chunk ever (at most :data:`_batching.PROBE_ROWS` rows) measures the bytes autograd saves
        per row. Later chunks hold ``rows`` rows (given, or automatic) minus the rows that the explanation's own
        buffers (``held_bytes()``) already take, so the peak stays that of ``rows`` rows of activations
        (:func:`_batching.chunk_rows`). Only the first ``layer_rows`` points capture the ``layers``; without
        ``grad``, chunks are forward-only (``consume`` gets ``None`` gradients).
        """
        start = 0
        while start < total:
            counter = None
            remaining = total - start
            if self.bytes_per_row is None:
                size = min(_batching.PROBE_ROWS, remaining, self.rows or _batching.PROBE_ROWS)
                counter = _batching.SavedBytes(self.net) if grad else None
            else:
                assert self.rows is not None  # set with bytes_per_row
                rows = _batching.chunk_rows(self.rows, self.bytes_per_row, self.held_bytes())
                # Balanced chunks: 1000 rows at <= 64 per chunk run as 16 chunks of 62-63, not 15 x 64 + one of 40.
                size = -(-remaining // -(-remaining // rows))
            sl = slice(start, start + size)
            xs, tgt = make(sl)
            if grad:
                use = layers if start < layer_rows else None
                before = {key: len(cap.acts) for key, cap in (use or {}).items()}
                logits, g_x = self.evaluate(xs, tgt, layers=use, relu_mode=relu_mode, counter=counter)
                keep = layer_rows - start
                for key, cap in (use or {}).items():
                    if len(cap.acts) > before[key] and keep < size:  # the chunk runs past the layer rows
                        cap.acts[-1], cap.grads[-1] = cap.acts[-1][:keep], cap.grads[-1][:keep]
                consume(sl, logits, g_x)
            else:
                consume(sl, self.forward_logits(xs, tgt), None)
            if counter is not None:
                self.bytes_per_row = counter.bytes / size
                if self.rows is None:
                    self.rows = _batching.auto_rows(self.bytes_per_row, self.device)
            start += size


# ------------------------------------------------------------------------------------------------- adaptive IG


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
    are dropped as soon as it is done (within tolerance, at ``max_steps``, stalled, or nothing left to refine).
    """

    REFINE_FRACTION = 0.5

    def __init__(self, x_minus_b: Tensor, target: Tensor) -> None:
        self.diff = x_minus_b
        self.target = target
        self.n = x_minus_b.shape[0]
        self.count = torch.zeros(self.n, dtype=torch.long, device=x_minus_b.device)
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

    def refinement(self, need: Tensor, max_steps: int) -> tuple[Tensor, Tensor]:
        """The next round's path points ``(sample index, alpha)`` for the samples in ``need``; empty when done."""
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


def _flat_scale(f_x: Tensor, f_b: Tensor, logits_x: Tensor) -> Tensor:
    """Denominator of adaptive IG's stopping rule: ``|f(x) - f(b)|``, floored at a fraction of the logit range.

    A probe whose score barely changes along the path (a flat or untrained model) has a relative error dominated by
    noise in a near-zero denominator; measured against its logit range instead, its error is already negligible.
    """
    spread = (logits_x.amax(1) - logits_x.amin(1)) if logits_x.shape[1] > 1 else logits_x.abs().squeeze(1)
    return torch.maximum((f_x - f_b).abs(), FLAT_FRACTION * spread).clamp_min(REL_EPS)


def _degenerate(maps: Tensor) -> Tensor:
    """``(N,)`` bool: maps with nothing to refine towards (the library's one rule, :mod:`lightning_xai.metrics.degenerate`)."""
    from lightning_xai.metrics.degenerate import degenerate_rows  # lazy: keeps `import lightning_xai.attribution` light

    return degenerate_rows(maps)


# ------------------------------------------------------------------------------------------- the shared pass


@dataclass
class IGResult:
    attr: Tensor
    delta: Tensor
    relative_error: Tensor
    evals: Tensor


@dataclass
class Shared:
    """What the shared pass computed at the inputs, for the methods' ``compute``."""

    logits: Tensor  # (N, K) float
    input_grad: Tensor | None = None  # (N, C, H, W)
    layers: dict[int, LayerCapture] = field(default_factory=dict)  # by id(module), or id of the failing request
    layer_of: dict[str, int] = field(default_factory=dict)  # method name -> key in ``layers``
    reshape_of: dict[str, Any] = field(default_factory=dict)  # method name -> reshape of its automatic layer
    ig: IGResult | None = None

    def layer(self, method: str) -> tuple[str, Tensor, Tensor]:
        """``(name, activation, gradient)`` of ``method``'s layer at the inputs; raises its layer's error."""
        cap = self.layers[self.layer_of[method]]
        act, grad = cap.get()
        return cap.name, act, grad


class Context:
    """The inputs of one call and chunked evaluation for the methods' own passes."""

    def __init__(self, engine: _Engine, x: Tensor, target: Tensor, auto_layer: dict[str, Any] | None = None) -> None:
        self.engine, self.x, self.target = engine, x, target
        self.n = x.shape[0]
        # The automatic CAM layer, found once per call (sub-contexts of SmoothGrad share it).
        self.auto_layer: dict[str, Any] = {} if auto_layer is None else auto_layer

    @property
    def net(self) -> nn.Module:
        return self.engine.net

    def forward_rows(self) -> int:
        """Points per forward-only chunk (no activations are kept for backward: twice the gradient rows)."""
        rows = self.engine.rows or _batching.PROBE_ROWS
        return max(1, 2 * rows)

    def scores(self, total: int, make: Callable[[slice], tuple[Tensor, Tensor]]) -> Tensor:
        """Target scores ``(total,)`` float, forward only: ``make(sl)`` returns the points and their targets."""
        out = torch.empty(total, device=self.x.device)
        step = self.forward_rows()
        for start in range(0, total, step):
            sl = slice(start, min(start + step, total))
            xs, tgt = make(sl)
            logits = self.engine.forward_logits(xs, tgt)
            out[sl] = logits.gather(1, tgt.unsqueeze(1)).squeeze(1)
        return out

    def gradients(self, total: int, make: Callable[[slice], tuple[Tensor, Tensor]], *,
                  relu_mode: str | None = None, consume: Callable[[slice, Tensor, Tensor], None]) -> None:
        """Forward + input gradient at ``total`` points in chunks; ``consume(sl, logits, grads)`` per chunk."""
        def forward(sl: slice, logits: Tensor, grads: Tensor | None) -> None:
            assert grads is not None  # a gradient stream
            consume(sl, logits, grads)

        self.engine.stream(total, make, forward, relu_mode=relu_mode)

    def run(self, method: Any, inputs: Tensor, target: Tensor) -> Tensor:
        """``method``'s map on other inputs (e.g. noisy copies), with this call's model and settings."""
        sub = Context(self.engine, inputs, target, self.auto_layer)
        shared, _ = shared_pass(sub, {method.name: method}, collect=False)
        return method.compute(sub, shared)


def shared_pass(ctx: Context, methods: dict[str, Any], *, collect: bool) -> tuple[Shared, dict[str, BaseException]]:
    """Serve every method's :class:`~._registry.Request` with one stream of batched forward/backward chunks.

    Returns the :class:`Shared` results and, for ``collect``, the methods whose layer could not be resolved.
    """
    engine, x, tgt, n = ctx.engine, ctx.x, ctx.target, ctx.n
    device, dtype = x.device, x.dtype
    requests = {name: m.request() for name, m in methods.items()}
    errors: dict[str, BaseException] = {}
    shared = Shared(logits=torch.empty(n, 0, device=device))

    _resolve_layers(ctx, requests, shared, errors, collect=collect)
    live = [name for name in requests if name not in errors]
    want_grad = any(requests[m].input_grad for m in live) or bool(shared.layers)
    paths_req = next((requests[m].path for m in live if requests[m].path is not None), None)
    want_grad = want_grad or paths_req is not None

    if not want_grad:
        logits = torch.zeros(n, 0, device=device)

        def keep_logits(sl: slice, out: Tensor, _: Tensor | None) -> None:
            nonlocal logits
            if logits.shape[1] == 0:
                logits = torch.zeros(n, out.shape[1], device=device)
            logits[sl] = out

        engine.stream(n, lambda sl: (x[sl], tgt[sl]), keep_logits, grad=False)
        shared.logits = logits
        return shared, errors

    if paths_req is not None:
        b = baseline_tensor(paths_req["baseline"], x)
        n_steps, tolerance, max_steps = paths_req["n_steps"], paths_req["tolerance"], paths_req["max_steps"]
        alphas, weights = trapezoid(n_steps, dtype)
    else:
        b = x
        n_steps, tolerance, max_steps = 1, None, 1
        alphas, weights = torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype)
    k = alphas.shape[0]
    # alpha-major order: all samples at alpha = 1 first (input-gradient and layer rows), then alpha = 0, then interior.
    idx = torch.arange(n, device=device).repeat(k)
    alpha = alphas.to(device).repeat_interleave(n)
    weight = weights.to(device).repeat_interleave(n)

    logits_x = torch.zeros(n, 0, device=device)
    input_grad = torch.zeros_like(x)
    integral = torch.zeros_like(x) if paths_req is not None else None
    f_b = torch.zeros(n, device=device)
    # Adaptive IG keeps every node's (target score, input gradient): refining an interval changes its end nodes'
    # trapezoid weights, which needs their gradients again (see _AdaptivePaths).
    paths = _AdaptivePaths(x - b, tgt) if paths_req is not None and tolerance is not None else None

    def held_bytes() -> int:
        buffers = (x, b, integral, input_grad, None if paths is None else paths.diff)
        held = sum(t.untyped_storage().nbytes() for t in buffers if t is not None)
        held += sum(t.untyped_storage().nbytes() for cap in shared.layers.values() for t in (*cap.acts, *cap.grads))
        return held + (paths.nbytes() if paths is not None else 0)

    engine.held_bytes = held_bytes

    def make(sl: slice) -> tuple[Tensor, Tensor]:
        rows_idx, rows_alpha = idx[sl], alpha[sl]
        xr = x[rows_idx]
        if bool((rows_alpha == 1).all()):
            return xr, tgt[rows_idx]
        br = b[rows_idx]
        xs = br + rows_alpha.view(-1, 1, 1, 1) * (xr - br)
        # alpha == 1 must be the input itself, bit for bit, so saliency / Grad-CAM equal the standalone functions.
        return torch.where((rows_alpha == 1).view(-1, 1, 1, 1), xr, xs), tgt[rows_idx]

    def consume(sl: slice, logits: Tensor, g_x: Tensor | None) -> None:
        nonlocal logits_x
        assert g_x is not None
        rows_idx, rows_alpha = idx[sl], alpha[sl]
        if logits_x.shape[1] == 0:
            logits_x = torch.zeros(n, logits.shape[1], device=device)
        at_x = rows_alpha == 1
        if bool(at_x.any()):
            logits_x[rows_idx[at_x]] = logits[at_x]
            input_grad[rows_idx[at_x]] = g_x[at_x].to(dtype)
        if integral is not None:
            at_b = rows_alpha == 0
            if bool(at_b.any()):
                f_b[rows_idx[at_b]] = logits[at_b].gather(1, tgt[rows_idx[at_b]].unsqueeze(1)).squeeze(1)
            w = weight[sl].view(-1, 1, 1, 1).to(g_x.dtype)
            integral.index_add_(0, rows_idx, (g_x * w).to(dtype))
        if paths is not None:
            paths.add(rows_idx, rows_alpha, logits, g_x)

    engine.stream(idx.shape[0], make, consume, layer_rows=n, layers=shared.layers)
    shared.logits = logits_x
    shared.input_grad = input_grad

    if paths_req is not None:
        assert integral is not None
        shared.ig = _ig_result(engine, paths, x, b, tgt, integral, f_b, logits_x, n_steps=n_steps,
                               tolerance=tolerance, max_steps=max_steps)
        paths = None  # frees the stored node gradients (held_bytes reads this name too)
    return shared, errors


def _ig_result(engine: Any, paths: Any, x: Tensor, b: Tensor, tgt: Tensor, integral: Tensor, f_b: Tensor,
               logits_x: Tensor, *, n_steps: int, tolerance: float | None, max_steps: int) -> IGResult:
    """Integrated Gradients from the streamed integral: attributions, completeness, and (``paths``: adaptive) the
    refinement of the probes whose completeness error exceeds ``tolerance``."""
    n = x.shape[0]
    if n_steps == 1:
        f_b = engine.forward_logits(b, tgt).gather(1, tgt.unsqueeze(1)).squeeze(1)
    f_x = logits_x.gather(1, tgt.unsqueeze(1)).squeeze(1)
    evals = torch.full((n,), n_steps, dtype=torch.long, device=x.device)

    def completeness() -> tuple[Tensor, Tensor, Tensor]:
        attr = (x - b) * integral
        delta = attr.flatten(1).sum(1).float() - (f_x - f_b)
        return attr, delta, relative_error(delta, f_x, f_b)

    attr, delta, rel = completeness()
    if paths is not None:
        assert tolerance is not None
        attr, delta, rel = _refine(engine, paths, x, b, tgt, integral, completeness, (attr, delta, rel),
                                   scale=_flat_scale(f_x, f_b, logits_x), tolerance=tolerance, max_steps=max_steps)
        evals = paths.count.clone()
    return IGResult(attr.detach(), delta.detach(), rel.detach(), evals)


def _differentiable_layers(layers: dict[int, LayerCapture], captured: dict[int, list[Tensor]]) -> list[int]:
    """The captured layers whose activation can be differentiated against; the others get their ``error``."""
    keys: list[int] = []
    for key, cap in layers.items():
        if cap.error is not None:
            continue
        if not captured[key]:
            cap.error = LayerError(f"CAM layer {cap.name!r} was not called during the forward pass")
        elif not captured[key][-1].requires_grad:
            cap.error = LayerError(
                f"CAM layer {cap.name!r}'s output has no gradient: it was computed under torch.no_grad() (e.g. a "
                "frozen backbone run without grad inside forward) or detached; choose a layer after that part")
        else:
            keys.append(key)
    return keys


def _grad(scores: Tensor, wrt: list[Tensor]) -> tuple[Tensor | None, ...]:
    """``autograd.grad`` of the summed target scores w.r.t. ``wrt``, with the causes users can act on named."""
    try:
        return torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
    except RuntimeError as err:
        message = str(err).lower()
        if "checkpoint" in message and ".grad()" in message:  # wording differs across torch versions
            raise RuntimeError(
                "the model uses reentrant gradient checkpointing (torch.utils.checkpoint with use_reentrant=True), "
                "which cannot be differentiated with torch.autograd.grad (pytorch #51743). Use "
                "use_reentrant=False, or disable checkpointing in eval mode."
            ) from err
        if "does not require grad" in message and not scores.requires_grad:
            raise RuntimeError(
                "the target score does not depend on the input through anything differentiable (the whole "
                "forward ran without grad, e.g. under torch.no_grad() inside forward)") from err
        raise


def _resolve_layers(ctx: Context, requests: dict[str, Any], shared: Shared, errors: dict[str, BaseException], *,
                    collect: bool) -> None:
    """Resolve each method's layer once into ``shared.layers`` (``None``: the automatic choice and its reshape, found
    once per call and shared); with ``collect`` a method whose layer cannot be resolved goes to ``errors``."""
    engine, auto_layer = ctx.engine, ctx.auto_layer
    for name, req in requests.items():
        if req.layer is False:
            continue
        try:
            if req.layer is None:
                if "layer" not in auto_layer:
                    try:
                        auto_layer["layer"] = gradcam_layer(engine.net, ctx.x[:1],
                                                            output_transform=engine.output_transform)
                    except Exception as err:  # noqa: BLE001 - kept for every method that needs the automatic layer
                        auto_layer["layer"] = err
                if isinstance(auto_layer["layer"], BaseException):
                    raise auto_layer["layer"]
                found = auto_layer["layer"]
                lname, module = found.name, found.module
                shared.reshape_of[name] = found.reshape
            else:
                lname, module = resolve_layer(engine.net, req.layer)
        except Exception as err:
            if not collect:
                raise
            errors[name] = err
            continue
        key = id(module)
        shared.layers.setdefault(key, LayerCapture(lname, module))
        shared.layer_of[name] = key


def _refine(engine: Any, paths: Any, x: Tensor, b: Tensor, tgt: Tensor, integral: Tensor,
            completeness: Any, start: tuple[Tensor, Tensor, Tensor], *, scale: Tensor, tolerance: float,
            max_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive Integrated Gradients: refine the path intervals of the probes whose completeness error exceeds
    ``tolerance`` until it is met, ``max_steps`` is reached or the error stops shrinking; returns ``completeness()``.

    Stopping rule: the error against |f(x) - f(b)| floored at a fraction of the logit range (``scale``: flat or
    untrained models), no refinement of degenerate maps, and a probe whose error stops shrinking stops.
    """
    n, device, dtype = x.shape[0], x.device, x.dtype
    attr, delta, rel = start
    done = _degenerate(attr)
    previous = torch.full((n,), math.inf, device=device)
    stalls = torch.zeros(n, dtype=torch.long, device=device)
    while True:
        err = delta.abs() / scale
        stalls = torch.where(err > STALL_RATIO * previous, stalls + 1, torch.zeros_like(stalls))
        done |= stalls >= STALL_ROUNDS
        previous = err
        ref_idx, ref_alpha = paths.refinement((err > tolerance) & ~done, max_steps)
        if ref_idx.numel() == 0:
            break

        def ref_make(sl: slice, i: Tensor = ref_idx, a: Tensor = ref_alpha) -> tuple[Tensor, Tensor]:
            xr, br = x[i[sl]], b[i[sl]]
            return br + a[sl].view(-1, 1, 1, 1) * (xr - br), tgt[i[sl]]

        engine.stream(ref_idx.shape[0], ref_make,
                      lambda sl, logits, g_x, i=ref_idx, a=ref_alpha: paths.add(i[sl], a[sl], logits, g_x))
        # The samples refined in this round get the trapezoid rule on their non-uniform nodes; samples never refined
        # keep the streamed fixed-step integral bit for bit.
        now = torch.zeros(n, dtype=torch.bool, device=device)
        now[ref_idx] = True
        integral[now] = paths.integral(dtype)[now]
        attr, delta, rel = completeness()
        done |= _degenerate(attr)
    return attr, delta, rel
