"""Trainer rounds on the models people train (pending: needs the drift tracker on main)."""

from __future__ import annotations

import warnings

import pytest
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from test_models_monitor import (
    SIZE,
    Classifier,
    CompiledInside,
    FrozenBackbone,
    SkipsItsConvLater,
    TokenNet,
    _fit,
    _monitor,
    _token_reshape,
    cnn,
)

from lightning_xai.attribution import grad_cam

torchvision = pytest.importorskip("torchvision")


def test_compiled_submodule_maps_equal_the_eager_models(tmp_path):
    model = CompiledInside()
    monitor = _monitor()
    _fit(model, monitor, tmp_path)
    assert monitor.layer_name == "net._orig_mod.3"
    latest = monitor.latest
    eager = model.net._orig_mod  # the same weights, run eagerly
    probes = monitor.probe_set
    expected = grad_cam(eager, probes.images, probes.labels, layer="3")
    assert expected.abs().max() > 0
    torch.testing.assert_close(latest["maps"]["grad_cam"], expected)
    assert len(monitor.history) == 2


def test_compiled_lightning_module_maps_equal_the_eager_models(tmp_path):
    model = Classifier(cnn())
    monitor = _monitor(methods=("grad_cam", "saliency"))
    _fit(torch.compile(model, backend="eager"), monitor, tmp_path, epochs=1)  # Lightning compiles its forward
    assert monitor.layer_name == "net.3"
    probes = monitor.probe_set
    torch.testing.assert_close(monitor.latest["maps"]["grad_cam"],
                               grad_cam(model.net, probes.images, probes.labels, layer="3"))


def test_frozen_backbone_under_no_grad_is_said_once_at_setup(tmp_path):
    monitor = _monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(FrozenBackbone(), monitor, tmp_path, epochs=3)
    messages = [str(w.message) for w in caught if "ExplanationMonitor" in str(w.message)]
    left_out = [m for m in messages if "left out" in m]
    assert len(left_out) == 1, messages
    assert "saliency" in left_out[0] and "integrated_gradients" in left_out[0] and "torch.no_grad()" in left_out[0]
    assert "'backbone'" in left_out[0]
    assert not [m for m in messages if "does not depend" in m or "failed at epoch" in m], messages
    # Grad-CAM on the head's conv (computed with gradients) still runs every epoch.
    assert monitor.methods == ("grad_cam",) and monitor.layer_name == "head.1"
    assert len(monitor.history) == 3 and monitor.latest["maps"]["grad_cam"].abs().max() > 0


def test_vision_transformer_in_a_trainer(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=4, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    monitor = _monitor(methods=("grad_cam", "saliency"))
    _fit(Classifier(net), monitor, tmp_path, epochs=1)
    assert monitor.layer_name == "net.encoder.layers.encoder_layer_0"
    cam = monitor.latest["maps"]["grad_cam"]
    assert cam.shape == (3, 1, SIZE, SIZE) and torch.isfinite(cam).all()
    assert monitor.methods == ("grad_cam", "saliency")


def test_multi_label_probes_explain_positive_labels_with_sigmoid_scores(tmp_path):
    model = Classifier(cnn(), multi_label=True)
    monitor = _monitor(methods=("grad_cam", "saliency"))
    _fit(model, monitor, tmp_path, multi_label=True)
    probes = monitor.probe_set
    assert probes.multi_label and probes.labels.tolist() == [0, 1, 2]
    assert all(bool(probes.label_sets[i, c]) for i, c in enumerate(probes.labels.tolist()))
    with torch.no_grad():
        logits = model(probes.images)
    expected = logits.sigmoid().gather(1, probes.labels[:, None])[:, 0]
    torch.testing.assert_close(monitor.latest["prob"], expected)


def test_a_user_reshape_for_tokens_the_setup_cannot_map(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(MisconfigurationException, match=r"(?s)layer='net.block'.*reshape="):
        _fit(Classifier(TokenNet()), _monitor(layer="net.block", methods=("grad_cam",)), tmp_path)
    monitor = _monitor(layer="net.block", methods=("grad_cam",),
                       method_options={"grad_cam": {"reshape": _token_reshape}})
    _fit(Classifier(TokenNet()), monitor, tmp_path, epochs=1)
    assert monitor.latest is not None and monitor.latest["maps"]["grad_cam"].shape == (3, 1, SIZE, SIZE)


def test_a_method_failing_in_an_epoch_does_not_take_the_others_down(tmp_path):
    monitor = _monitor(methods=("grad_cam", "saliency"), layer="net.3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(SkipsItsConvLater(), monitor, tmp_path, epochs=3)
    failed = [str(w.message) for w in caught if "grad_cam failed at epoch" in str(w.message)]
    assert len(failed) == 1 and "net.3" in failed[0], failed  # once, with the cause
    assert len(monitor.history) == 3  # every epoch explained
    assert torch.isfinite(monitor.latest["maps"]["saliency"]).all() and monitor.latest["maps"]["saliency"].abs().max() > 0
    assert torch.isnan(monitor.latest["maps"]["grad_cam"]).all()


def test_an_all_zero_model_is_degenerate_never_stable(tmp_path):
    from test_models_monitor import ZeroHead

    monitor = _monitor(max_overhead=None)  # every method every epoch: each must report its degenerate maps
    trainer = _fit(ZeroHead(), monitor, tmp_path, epochs=3)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")}
    for method in monitor.methods:
        assert metrics.get(f"xai/{method}/stability") != 1.0  # a flat map is not "perfectly stable"
        assert metrics[f"xai/{method}/degenerate"] == 3  # every probe's map reported as degenerate
        for record in monitor.history:
            assert not any(v == 1.0 for v in record["stability"][method])
