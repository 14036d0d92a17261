"""Activation maximisation: per class, an input optimised to maximise its score, on a copy of the model."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai import keys
from lightning_xai._validation import integer, number, seed
from lightning_xai.attribution import preserved_state, unwrap_model
from lightning_xai.views._common import (
    OutputTransform,
    View,
    ViewContext,
    ViewOutput,
    _logits,
    capture,
    checked,
    tile_grid,
)

__all__ = ["ActivationMaxView", "maximize_class"]


def _blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.transpose(2, 3), groups=x.shape[1])


def maximize_class(
    model: nn.Module,
    classes: Sequence[int],
    image_shape: Sequence[int],
    *,
    steps: int = 64,
    lr: float = 0.2,
    jitter: int = 2,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    l2: float = 1e-3,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output_transform: OutputTransform | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Optimise one input per class to maximise that class's logit ("deep dream" for a classifier).

    The image is parameterised in pixel space as ``sigmoid(z)`` (values in ``[0, 1]``, normalised with
    ``mean``/``std`` before the model sees it), starts from a fixed seed (grey plus small noise from its own
    generator), and is regularised the usual way: a random jitter (roll by up to ``jitter`` pixels) every step, a
    Gaussian blur of ``z`` every ``blur_every`` steps, and an L2 penalty pulling the image to grey. Adam on ``z`` only.

    Runs on a deep copy of the (unwrapped) model in eval mode with frozen parameters, inside
    :func:`~lightning_xai.attribution.preserved_state`; gradients via ``torch.autograd.grad`` with respect to ``z``.
    The jitter draws from a private generator: the global RNG is not consumed.

    Cost: ``steps`` forward + backward passes on a batch of ``len(classes)`` images, and one copy of the model.

    Args:
        model: the classifier.
        classes: the classes to maximise, one image each.
        image_shape: ``(C, H, W)`` of the model's input.
        steps: optimisation steps.
        lr: Adam learning rate on ``z``.
        jitter: maximum roll in pixels per step (0 disables).
        blur_every: blur ``z`` every this many steps (0 disables).
        blur_sigma: standard deviation of that blur, in pixels.
        l2: weight of ``mean((image - 0.5) ** 2)`` in the loss.
        seed: seed of the starting image and the jitter.
        mean, std: the per-channel normalisation the model expects (``None``: images in ``[0, 1]``).
        output_transform: maps the model output to logits.
        device: where to run (default: the model's parameters' device).

    Returns:
        ``(images (K, C, H, W) in [0, 1], start_scores (K,), final_scores (K,))``, the scores being the target logits
        at the seed image and at the result, all on the CPU.
    """
    net = unwrap_model(model)
    if device is None:
        param = next(iter(net.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    c, h, w = (int(v) for v in image_shape)
    target = torch.tensor(list(classes), dtype=torch.long, device=device)
    n = target.numel()
    gen = torch.Generator().manual_seed(seed)
    z = (0.1 * torch.randn(n, c, h, w, generator=gen)).to(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) if mean is not None else None
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) if std is not None else None
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=gen).tolist() if jitter else [[0, 0]] * steps

    def scores(x01: Tensor, copy_net: nn.Module) -> Tensor:
        x = x01 - mean_t if mean_t is not None else x01
        x = x / std_t if std_t is not None else x
        logits = _logits_with_grad(copy_net(x), output_transform, x.shape[0])
        return logits.gather(1, target[:, None]).squeeze(1)

    with preserved_state(model):
        copy_net = copy.deepcopy(net).eval()
        for p in copy_net.parameters():
            p.requires_grad_(False)
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            with torch.no_grad():
                start = scores(torch.sigmoid(z), copy_net)
            z = z.clone().requires_grad_(True)
            # Adam by hand on z: a torch.optim optimizer would be harmless but this keeps the state local
            m = torch.zeros_like(z)
            v = torch.zeros_like(z)
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            for step in range(steps):
                x01 = torch.sigmoid(z)
                dy, dx = shifts[step]
                if dy or dx:
                    x01 = torch.roll(x01, shifts=(dy, dx), dims=(2, 3))
                loss = -scores(x01, copy_net).sum() + l2 * n * ((x01 - 0.5) ** 2).mean()
                (grad,) = torch.autograd.grad(loss, z)
                with torch.no_grad():
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    m_hat = m / (1 - beta1 ** (step + 1))
                    v_hat = v / (1 - beta2 ** (step + 1))
                    z -= lr * m_hat / (v_hat.sqrt() + eps)
                    if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                        z.copy_(_blur(z, blur_sigma))
            with torch.no_grad():
                result = torch.sigmoid(z).detach()
                final = scores(result, copy_net)
        del copy_net
    return result.cpu(), start.detach().cpu(), final.detach().cpu()


def _logits_with_grad(out: Any, output_transform: OutputTransform | None, rows: int) -> Tensor:
    if output_transform is not None:
        out = output_transform(out)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != rows:
        return _logits(out, None, rows)  # raises with the shared message
    return out.float()


class ActivationMaxView(View):
    """For each class, the input that maximises its logit (:func:`maximize_class`), every ``every_n_epochs``.

    Same seed every time, so the images of successive epochs differ only because the model did. Captions give the
    class, its logit at the result and the softmax probability. Scalars ``xai/activation_max/gain``: the mean over
    classes of (logit at the result - logit at the seed image), and ``xai/activation_max/probability``: the mean
    softmax probability of the target class at the results (how easily the class can be "dreamt").

    Cost: ``steps`` forward + backward passes on ``num_classes`` images and a copy of the model, every
    ``every_n_epochs`` epochs.

    Logged: ``xai/activation_max/classes`` (image), the two scalars.
    """

    name = "activation_max"
    options = {
        "every_n_epochs": integer(1, 1, 10**6, "optimise every n-th round"),
        "steps": integer(64, 1, 4096, "forward + backward passes on num_classes images per run"),
        "lr": number(0.2, 0.0, 10.0, "Adam learning rate on the image", open_low=True, open_high=True),
        "jitter": integer(2, 0, 64, "largest roll per step, in pixels"),
        "blur_every": integer(4, 0, 4096, "blur every this many steps; 0 disables"),
        "blur_sigma": number(0.5, 0.0, 10.0, "blur standard deviation, in pixels", open_low=True, open_high=True),
        "l2": number(1e-3, 0.0, 1e6, "weight of the pull towards grey"),
        "seed": seed(0, "start image and jitter"),
    }

    def __init__(self, every_n_epochs: int = 1, steps: int = 64, lr: float = 0.2, jitter: int = 2,
                 blur_every: int = 4, blur_sigma: float = 0.5, l2: float = 1e-3, seed: int = 0) -> None:
        opts = checked(type(self).__name__, self.options, every_n_epochs=every_n_epochs, steps=steps, lr=lr,
                       jitter=jitter, blur_every=blur_every, blur_sigma=blur_sigma, l2=l2, seed=seed)
        self.every_n_epochs = opts.pop("every_n_epochs")
        self.settings = {**opts, "lr": float(lr), "blur_sigma": float(blur_sigma), "l2": float(l2)}

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        if ctx.epoch % self.every_n_epochs != 0:
            return ViewOutput()
        num_classes = capture(ctx.model, ctx.images[:1], output_transform=ctx.output_transform)[0].shape[1]
        classes = list(range(num_classes))
        images, start, final = maximize_class(ctx.model, classes, ctx.images.shape[1:], mean=ctx.mean, std=ctx.std,
                                              output_transform=ctx.output_transform, device=ctx.images.device,
                                              **self.settings)
        normed = images
        if ctx.mean is not None:
            normed = normed - torch.tensor(ctx.mean, dtype=torch.float32).view(1, -1, 1, 1)
        if ctx.std is not None:
            normed = normed / torch.tensor(ctx.std, dtype=torch.float32).view(1, -1, 1, 1)
        result_logits = capture(ctx.model, normed.to(ctx.images.device), output_transform=ctx.output_transform)[0]
        probs = result_logits.softmax(dim=1).cpu().gather(1, torch.tensor(classes)[:, None]).squeeze(1)
        captions = [[ctx.class_name(c)[:12], f"z={float(f):.1f} p={float(p):.2f}"]
                    for c, f, p in zip(classes, final, probs)]
        tiles = images if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
        grid = tile_grid(tiles, captions, nrow=len(classes), upscale_to=96)
        return ViewOutput(images={keys.of("activation_max", "classes"): grid},
                          scalars={keys.of("activation_max", "gain"): float((final - start).mean()),
                                   keys.of("activation_max", "probability"): float(probs.mean())})

