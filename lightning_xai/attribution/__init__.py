"""Attribution core: Grad-CAM, saliency and Integrated Gradients as pure-torch functions (no Lightning import).

All functions take a model and a batch ``(N, C, H, W)``, run inside :func:`preserved_state` (eval mode, gradients on
even under ``inference_mode``/``no_grad``, nothing about the model or the RNG changed afterwards), differentiate with
``torch.autograd.grad`` only (parameter ``.grad`` untouched) and return detached tensors on the inputs' device.
"""

from lightning_xai.attribution._core import (
    METHODS,
    Explanation,
    explain,
    explain_detailed,
    grad_cam,
    integrated_gradients,
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
from lightning_xai.attribution._state import preserved_state

__all__ = [
    "METHODS",
    "ChannelsLast",
    "GradCamLayer",
    "TokenGrid",
    "as_spatial",
    "Explanation",
    "explain",
    "explain_detailed",
    "find_gradcam_layer",
    "gradcam_layer",
    "gradient_blockers",
    "grad_cam",
    "integrated_gradients",
    "preserved_state",
    "resolve_layer",
    "saliency",
    "to_heatmap",
    "unwrap_model",
]
