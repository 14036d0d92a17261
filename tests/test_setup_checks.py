"""What depends on the model is checked at setup, before training (issue 20): the batch sizes the rounds really use
(item 4), the memory the options imply for this model and input (item 2), models seen in use (item 9: torchvision's
ViT with its zero-initialised head, an explicit layer whose positions never reach the head, a dataclass output, a CNN
with one empty map) and the dashboard layout of two monitors (item 7)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from pytorch_lightning.callbacks import EarlyStopping
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from test_models_monitor import SIZE, Classifier, _data, _fit, _monitor, cnn
from torch import nn

from lightning_xai import ExplanationMonitor
from lightning_xai.callbacks._compat import MisconfigurationException
from lightning_xai.callbacks._probes import round_batch_sizes, suggest_output_transform
from lightning_xai.metrics.sanity import sanity_scores

torchvision = pytest.importorskip("torchvision")


class Started(pl.Callback):
    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, *args) -> None:
        self.started = True


def _fit_tiny(tmp_path, model, monitor, **overrides):
    pl.seed_everything(7, workers=True)
    started = Started()
    trainer = pl.Trainer(callbacks=[monitor, started], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model, datamodule=TinyDataModule())
    return trainer, started


# ------------------------------------------------------------------------------------------ item 4: batch sizes
class NoBatchOfFour(TinyCNN):
    """Runs on batches of 1 and 8 (the training batch size), not on 4."""

    def forward(self, x):
        if x.shape[0] == 4:
            raise RuntimeError("this model cannot take a batch of 4")
        return super().forward(x)


def test_a_model_failing_on_a_batch_size_the_rounds_use_fails_at_setup(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"))
    started = Started()
    with pytest.raises(MisconfigurationException,
                       match=r"(?s)fails on a batch of 4 images \(RuntimeError: this model cannot take a batch of 4\) "
                             r"but runs on batches of \[1, 2, 3\].*any batch size") as info:
        pl.Trainer(callbacks=[monitor, started], **trainer_kwargs(tmp_path)).fit(NoBatchOfFour(),
                                                                                 datamodule=TinyDataModule())
    assert "one rank's 4 probes" in str(info.value)  # where the rounds use that size
    assert not started.started


def test_round_batch_sizes_follow_the_chunks_the_rounds_use():
    monitor = ExplanationMonitor(num_probes=10, method_options={"integrated_gradients": {"n_steps": 16}},
                                 metrics=("faithfulness",))
    sizes = round_batch_sizes(monitor.config, 10, world_size=2, rows=64, num_classes=3, pool_size=100)
    # 5 probes per rank; 5 x 16 nodes = 80 points: a first chunk of 16, then 64; faithfulness 5 x 9 = 45 points
    assert {1, 5, 16, 64, 45, 36, 3} <= set(sizes) and set(range(1, 9)) <= set(sizes)
    assert max(sizes) == 64 and "probes" in sizes[5]


# ------------------------------------------------------------------------------------------ item 2: memory at setup
def test_options_implying_more_memory_than_the_device_has_fail_at_setup(tmp_path, monkeypatch):
    monkeypatch.setattr("lightning_xai.callbacks._probes.available_bytes", lambda device: 128 << 20)  # a 128 MiB host
    big = ExplanationMonitor(num_probes=16, methods=("saliency", "integrated_gradients"),
                             method_options={"integrated_gradients": {"n_steps": 16, "max_steps": 4096}})
    with pytest.raises(MisconfigurationException,
                       match=r"(?s)would hold about .* on cpu in the worst case .*max_steps=4096.*Lower "
                             r"method_options\['integrated_gradients'\]\['max_steps'\]"):
        _fit_tiny(tmp_path / "big", TinyCNN(), big)
    small = ExplanationMonitor(num_probes=16, methods=("saliency", "integrated_gradients"),
                               method_options={"integrated_gradients": {"n_steps": 4, "max_steps": 16}})
    _fit_tiny(tmp_path / "small", TinyCNN(), small, max_epochs=1)
    estimate = small._probes.estimate
    assert 0 < estimate.device_bytes < 64 << 20 and estimate.passes == 16 * 16


def test_a_round_costing_many_epochs_of_training_is_said_at_setup(tmp_path):
    # occlusion with a 1-pixel window: 257 forwards per probe, 16 probes, against 32 training samples an epoch
    monitor = ExplanationMonitor(num_probes=16, methods=("occlusion",), metrics=(), log_images=False,
                                 method_options={"occlusion": {"window": 1}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_tiny(tmp_path, TinyCNN(), monitor, max_epochs=1)
    notes = [str(w.message) for w in caught if "forward + backward passes of one image" in str(w.message)]
    assert len(notes) == 1 and "up to 4112" in notes[0] and "32 training samples" in notes[0], notes
    assert monitor._probes.estimate.passes == 16 * 257


# ------------------------------------------------------------------------------------------ item 9: models in use
def _vit() -> nn.Module:
    torch.manual_seed(0)  # torchvision initialises the head to zero: every map is all zero before training
    return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=4, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)


def test_vit_with_a_zero_head_logs_stability_from_epoch_0_and_early_stopping_watches_it(tmp_path):
    net = _vit()
    assert not net.heads.head.weight.any()
    monitor = _monitor(methods=("grad_cam", "saliency"))
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")})

    stop = EarlyStopping(monitor="xai/grad_cam/stability", mode="max", patience=10)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[monitor, stop, Record()], num_sanity_val_steps=0)
    data = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(net), data, data)  # EarlyStopping finds its key at epoch 0: no crash
    assert trainer.current_epoch == 3 and len(seen) == 3
    first = seen[0]
    # the reference maps (before training) are all zero: nothing to compare with, reported as such, never "stable"
    assert first["xai/grad_cam/stability"] == 0.0 and first["xai/grad_cam/degenerate"] == 0.0
    assert all(v == v for epoch in seen for v in epoch.values())  # never NaN
    assert any("no probe's grad_cam map could be compared" in str(w.message) for w in caught)


def test_an_explicit_layer_whose_positions_never_reach_the_head_is_refused_at_setup(tmp_path):
    # a class-token ViT reads only the class token after the last block: Grad-CAM there is all zero, always
    with pytest.raises(MisconfigurationException,
                       match=r"(?s)layer='net.encoder.layers.encoder_layer_1'.*all zero at every epoch.*"
                             r"layer='net.encoder.layers.encoder_layer_0' \(the automatic choice\)"):
        _fit(Classifier(_vit()), _monitor(methods=("grad_cam",), layer="net.encoder.layers.encoder_layer_1"),
             tmp_path)
    with pytest.raises(MisconfigurationException,
                       match=r"method_options\['grad_cam'\]\['layer'\]='net.encoder.layers.encoder_layer_1'"):
        _fit(Classifier(_vit()), _monitor(methods=("grad_cam",),
                                          method_options={"grad_cam": {"layer": "net.encoder.layers.encoder_layer_1"}}),
             tmp_path)


def test_a_wrong_method_layer_errors_at_setup_like_layer(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"method_options\['grad_cam'\]\['layer'\]='net.9'.*net\.2"):
        _fit(Classifier(cnn()), _monitor(methods=("grad_cam", "saliency"),
                                         method_options={"grad_cam": {"layer": "net.9"}}), tmp_path)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    features: torch.Tensor


class DataclassOutput(Classifier):
    def forward(self, x):
        feats = self.net[:4](x)
        return Output(self.net[4:](feats), feats)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]).logits, batch[1])


def test_a_dataclass_output_gets_a_transform_that_works(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"output_transform=lambda out: out\.logits") as info:
        _fit(DataclassOutput(cnn()), _monitor(methods=("grad_cam", "saliency")), tmp_path)
    code = str(info.value).split("output_transform=")[1].split(" (it gives")[0]
    monitor = _monitor(methods=("grad_cam", "saliency"), output_transform=eval(code))  # the suggestion, as given
    _fit(DataclassOutput(cnn()), monitor, tmp_path, epochs=1)
    assert monitor.latest["maps"]["grad_cam"].abs().max() > 0


def test_suggested_transforms_are_checked_on_the_output():
    logits = torch.zeros(2, 3)
    assert "out['logits']" in suggest_output_transform({"aux": torch.zeros(2), "logits": logits}, rows=2)
    assert "out[1]" in suggest_output_transform((torch.zeros(2, 4, 4), logits), rows=2)
    assert "out.flatten(1)" in suggest_output_transform(torch.zeros(2, 3, 1, 1), rows=2)
    assert "callable" in suggest_output_transform("nothing", rows=2)


class EmptyFirstProbe(Classifier):
    """A CNN without biases: the all-black first probe has an all-zero map; the head is not zero."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten(), nn.Linear(8, 3)))


def test_the_zero_head_note_does_not_fire_for_a_cnn_with_one_empty_map(tmp_path):
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    images[0] = 0.0
    monitor = _monitor(methods=("grad_cam", "saliency"), probes=(images, torch.tensor([0, 1, 2])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(EmptyFirstProbe(), monitor, tmp_path, epochs=1)
    assert monitor.latest["maps"]["grad_cam"][0].abs().max() == 0  # the first probe's map is empty indeed
    assert not [w for w in caught if "initialised to zero" in str(w.message)]


def test_the_sanity_check_does_not_call_empty_maps_similar():
    maps = torch.rand(3, 1, 8, 8)
    zero = torch.zeros(3, 1, 8, 8)
    assert sanity_scores(zero, zero).isnan().all()  # not 1.0: two empty maps say nothing
    scores = sanity_scores(torch.cat([maps[:2], zero[:1]]), torch.cat([maps[:2], zero[:1]]))
    assert torch.allclose(scores[:2], torch.ones(2)) and scores[2].isnan()


def test_the_sanity_check_on_a_zero_head_logs_nothing_and_does_not_warn(tmp_path):
    from test_models_monitor import ZeroHead

    monitor = ExplanationMonitor(num_probes=3, methods=("grad_cam", "saliency"), metrics=("sanity",),
                                 log_images=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(ZeroHead(), monitor, tmp_path, epochs=1)
    assert not [w for w in caught if "barely change" in str(w.message)]
    assert not [k for k in trainer.callback_metrics if k.endswith("sanity_similarity")]


# ------------------------------------------------------------------------------------------ item 7: two monitors
def test_two_monitors_write_one_layout_holding_both(tmp_path):
    first = ExplanationMonitor(num_probes=3, methods=("grad_cam",), metrics=(), log_images=False)
    second = ExplanationMonitor(num_probes=3, methods=("saliency",), metrics=("agreement",), log_images=False)
    pl.seed_everything(7, workers=True)
    trainer = pl.Trainer(callbacks=[first, second], **trainer_kwargs(tmp_path / "two", max_epochs=1))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    acc = ea.EventAccumulator(trainer.logger.log_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    layouts = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    assert layouts  # TensorBoard shows one per run: each holds every monitor's charts
    for event in layouts:
        layout = layout_pb2.Layout()
        layout.ParseFromString(event.tensor_proto.string_val[0])
        tags = {t for c in layout.category for chart in c.chart for t in chart.multiline.tag}
        # both monitors log xai/drift/*: every key of each gets its monitor's suffix
        assert "^xai/grad_cam/stability/monitor_0$" in tags and "^xai/saliency/stability/monitor_1$" in tags
