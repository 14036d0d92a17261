"""Attribution methods as pure-torch functions (no Lightning import), on one registry.

All functions take a model and a batch ``(N, C, H, W)``, run inside :func:`preserved_state` (eval mode, gradients on
even under ``inference_mode``/``no_grad``, nothing about the model or the RNG changed afterwards), differentiate with
``torch.autograd.grad`` only (parameter ``.grad`` untouched) and return detached tensors on the inputs' device.
:func:`available_methods` lists the methods :func:`explain` accepts; each is one file in
``lightning_xai/attribution/methods/``.
"""

from lightning_xai.attribution._attention import NotApplicable
from lightning_xai.attribution._core import (
    Explanation,
    explain,
    explain_detailed,
    grad_cam,
    integrated_gradients,
    method_options,
    saliency,
)
from lightning_xai.attribution._heatmap import to_heatmap
from lightning_xai.attribution._layers import (
    ChannelsLast,
    GradCamLayer,
    TokenGrid,
    as_spatial,
    find_gradcam_layer,
    gradcam_layer,
    gradient_blockers,
    resolve_layer,
    unwrap_model,
)
from lightning_xai.attribution._registry import (
    METHODS,
    Method,
    available_methods,
    check_method_options,
    get_method,
    is_cheap,
    passes,
    register,
)
from lightning_xai.attribution._state import preserved_state

__all__ = [
    "METHODS",
    "ChannelsLast",
    "GradCamLayer",
    "TokenGrid",
    "Explanation",
    "Method",
    "NotApplicable",
    "as_spatial",
    "available_methods",
    "check_method_options",
    "explain",
    "explain_detailed",
    "find_gradcam_layer",
    "get_method",
    "gradcam_layer",
    "gradient_blockers",
    "grad_cam",
    "integrated_gradients",
    "is_cheap",
    "method_options",
    "passes",
    "preserved_state",
    "register",
    "resolve_layer",
    "saliency",
    "to_heatmap",
    "unwrap_model",
]
