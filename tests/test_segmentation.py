"""Segmentation models (issue 24): class maps become probes, a class's region is the target, Grad-CAM equals
pytorch-grad-cam's ``SemanticSegmentationTarget``, and ``ExplanationMonitor()`` works on U-Net / FCN / LRASPP in a real
Trainer without arguments and without changing training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from observer_checks import assert_same_training
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from seg_models import NUM_CLASSES, VOID, SegModule, TinyUNet, loaders, shapes, torchvision_model
from tb_events import read_events
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import explain_detailed, grad_cam
from lightning_xai.attribution.targets import (
    ClassScores,
    RegionScores,
    explained_regions,
    region_outcome,
    segmentation_layer,
    segmentation_logits,
)
from lightning_xai.probes import ClassMapRule, select_probes
from lightning_xai.render import ProbeRenderer
from lightning_xai.render.panel import OUTLINE_COLOR


# ------------------------------------------------------------------------------------------------ probes
def class_maps() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(7, 3, 8, 8)
    maps = torch.zeros(7, 8, 8, dtype=torch.long)
    maps[0, :4] = 1
    maps[1, :2] = 2
    maps[2] = 0  # background only
    maps[3, :5] = 2
    maps[3, 5:] = VOID  # void pixels outnumber nothing: never a class
    maps[4, :1] = 1
    maps[4, 1:3] = 2  # class 2 is the most frequent
    maps[5] = VOID
    maps[6, :3] = 1
    return images, maps


def test_class_maps_become_balanced_probes_with_their_class_region():
    images, maps = class_maps()
    probes = select_probes((images, maps), num_probes=6)
    # round-robin over the classes present (1, 2, 1, 2, ...), then the maps without a class, labelled -1
    assert probes.ids.tolist() == [0, 1, 6, 3, 4, 2]
    assert probes.labels.tolist() == [1, 2, 1, 2, 2, -1]
    for i, (pid, label) in enumerate(zip(probes.ids.tolist(), probes.labels.tolist())):
        expected = (maps[pid] == label).float() if label >= 0 else torch.zeros(8, 8)
        assert torch.equal(probes.masks[i, 0], expected), pid
    # the same from a map-style dataset of dicts, and deterministic
    dataset = [{"image": images[i], "mask": maps[i]} for i in range(len(images))]
    again = select_probes(dataset, num_probes=6)
    assert again.ids.tolist() == probes.ids.tolist() and torch.equal(again.masks, probes.masks)


def test_class_map_rule_most_frequent_class_background_void_and_a_named_class():
    _, maps = class_maps()
    rule = ClassMapRule()
    assert rule.label_and_mask(maps[4])[0] == 2  # most frequent non-background class
    assert rule.label_and_mask(maps[3])[0] == 2 and rule.label_and_mask(maps[3])[1].sum() == 40  # void left out
    assert rule.label_and_mask(maps[5])[0] is None and rule.label_and_mask(maps[2])[0] is None
    assert ClassMapRule(background=None).label_and_mask(maps[2])[0] == 0
    label, mask = ClassMapRule(class_index=1).label_and_mask(maps[1])
    assert label == 1 and mask.sum() == 0  # named class absent: its (empty) region, explained as predicted


# ------------------------------------------------------------------------------------------------ targets
def test_region_scores_are_the_class_logits_summed_over_the_region():
    logits = torch.randn(3, 4, 6, 6)
    classes = torch.tensor([2, 0, 2])
    regions = (torch.rand(3, 6, 6) > 0.5).float()
    scores = RegionScores(classes, regions)({"out": logits, "aux": torch.zeros(1)})
    expected = torch.stack([(logits[:, c] * regions[r]).sum(dim=(1, 2)) for r, c in enumerate(classes.tolist())], 1)
    torch.testing.assert_close(scores, expected)
    # regions at another resolution than the output: nearest resize
    half = RegionScores(classes, regions[:, ::2, ::2].contiguous())(logits[:, :, ::2, ::2])
    torch.testing.assert_close(half, torch.stack([(logits[:, c, ::2, ::2] * regions[r, ::2, ::2]).sum(dim=(1, 2))
                                                  for r, c in enumerate(classes.tolist())], 1))
    torch.testing.assert_close(ClassScores()(logits), logits.sum(dim=(2, 3)))
    assert segmentation_logits(torch.zeros(2, 5)) is None and segmentation_logits({"aux": logits}) is None


def test_explained_regions_follow_the_rule_and_fall_back():
    logits = torch.full((3, 3, 4, 4), -5.0)
    logits[:, 0] = 0.0  # background everywhere ...
    logits[0, 1, :2] = 5.0  # ... except class 1 in the top half of sample 0
    logits[1, 2, :, :1] = 5.0  # and class 2 in the first column of sample 1
    truth = torch.zeros(3, 1, 4, 4)
    truth[0, 0, 3] = 1.0  # sample 0's ground truth of class 1: the bottom row
    labels = torch.tensor([1, -1, -1])
    classes, regions = explained_regions(logits, labels, truth, "mask")
    assert classes.tolist() == [1, 2, 0]  # unknown: the most frequent predicted class other than background
    assert torch.equal(regions[0], truth[0, 0])  # the ground truth
    assert torch.equal(regions[1], (torch.arange(4) == 0).float().expand(4, 4))  # no truth: predicted
    assert torch.equal(regions[2], torch.ones(4, 4))  # only background predicted: background's predicted region
    classes, regions = explained_regions(logits, labels, truth, "predicted")
    assert torch.equal(regions[0], torch.cat([torch.ones(2, 4), torch.zeros(2, 4)]))
    pred, prob = region_outcome(logits, regions)
    assert pred.tolist() == [1, 2, 0] and bool((prob > 0.9).all())


@pytest.mark.parametrize("name", ["unet", "fcn_resnet50"])
def test_grad_cam_equals_pytorch_grad_cam_semantic_segmentation_target(name):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    def make():
        torch.manual_seed(0)
        return TinyUNet() if name == "unet" else torchvision_model("fcn_resnet50")

    data = shapes(2, size=64)
    x = torch.stack([data[i][0] for i in range(2)])
    maps = torch.stack([data[i][1] for i in range(2)])
    classes = maps.flatten(1).amax(dim=1)
    regions = (maps == classes[:, None, None]).float()
    net = make().eval()
    layer = segmentation_layer(net, x[:1])
    ours = grad_cam(net, x, torch.arange(2), layer=layer, output_transform=RegionScores(classes, regions))[:, 0]

    class Out(torch.nn.Module):  # pytorch-grad-cam's tutorial wrapper for torchvision's dict output
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            out = self.model(images)
            return out["out"] if isinstance(out, dict) else out

    reference = make()
    wrapped = Out(reference)
    with GradCAM(model=wrapped, target_layers=[reference.get_submodule(layer)]) as cam:
        targets = [SemanticSegmentationTarget(int(c), r.numpy()) for c, r in zip(classes, regions)]
        theirs = torch.from_numpy(cam(input_tensor=x.clone(), targets=targets))
    flat = ours.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    ours01 = ((flat - lo) / (hi - lo + 1e-7)).view_as(ours)
    assert bool((hi > 0).all()), "a non-trivial map on both samples"
    # same maps up to pytorch-grad-cam's min-max scaling (before its OpenCV bilinear resize; both commute)
    assert (ours01 - theirs).abs().max() < 1e-3


def test_the_layer_is_the_last_feature_layer_before_the_classifier():
    x = torch.rand(1, 3, 64, 64)
    assert segmentation_layer(TinyUNet().eval(), x) == "dec"
    assert segmentation_layer(torchvision_model("lraspp_mobilenet_v3_large").eval(), x) == "classifier.cbr"


def test_outlines_are_drawn_around_the_region():
    images = torch.zeros(1, 3, 16, 16)
    region = torch.zeros(1, 1, 16, 16)
    region[0, 0, 4:12, 4:12] = 1.0
    plain = ProbeRenderer(images, tile=16, alpha=0.0).tiles(torch.rand(1, 1, 16, 16))[0][0]
    tiles = ProbeRenderer(images, tile=16, alpha=0.0, outlines=region).tiles(torch.rand(1, 1, 16, 16))[0][0]
    white = (tiles == torch.tensor(OUTLINE_COLOR, dtype=torch.uint8)[:, None, None]).all(dim=0)
    assert white[4, 4:12].all() and white[3, 4:12].all() and white[4:12, 11].all()  # inner and outer boundary
    assert not white[6:10, 6:10].any() and not white[0, 0] and not (plain != 0).any()


# ------------------------------------------------------------------------------------------------ the monitor
def fit(tmp_path, net, callbacks=(), *, size=32, seed=7, max_epochs=2, n_train=16, **overrides):
    pl.seed_everything(seed, workers=True)
    model = SegModule(net() if callable(net) and not isinstance(net, torch.nn.Module) else net)
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, max_epochs=max_epochs, **overrides))
    train, val = loaders(size=size, n_train=n_train)
    trainer.fit(model, train, val)
    return trainer, model


def check_logged(trainer, monitor, methods=("grad_cam", "saliency")):
    events = read_events(trainer.logger.log_dir)
    for m in methods:
        assert f"xai/{m}/overlay" in events["images"], sorted(events["images"])
        for key in (f"xai/{m}/stability", f"xai/{m}/pointing_game", f"xai/{m}/relevance_mass"):
            values = [v for _, v in events["scalars"].get(key, [])]
            assert values and all(v == v for v in values), key
    assert "xai/drift/score" in events["scalars"]
    probes = monitor.probe_set
    assert probes.masks is not None and bool((probes.labels >= 1).all())  # a shape class, never background
    latest = monitor.latest
    assert latest["maps"]["grad_cam"].shape == (len(probes), 1, *probes.images.shape[-2:])
    # the overlay shows the region's outline (white pixels, absent from the heatmap colours of jet)
    _, width, height, pixels = events["images"]["xai/grad_cam/overlay"][-1]
    assert (pixels[..., :3] == 255).all(axis=-1).sum() > 20
    return events


def test_unet_zero_argument_monitor_logs_overlays_stability_localisation_and_drift(tmp_path):
    monitor = ExplanationMonitor(num_probes=4)
    trainer, _ = fit(tmp_path, TinyUNet, [monitor])
    check_logged(trainer, monitor)
    assert monitor.layer_name == "net.dec"
    assert [r["epoch"] for r in monitor.history] == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_torchvision_segmentation_models_with_dict_outputs(tmp_path, name):
    monitor = ExplanationMonitor(num_probes=2, max_overhead=None,
                                 method_options={"integrated_gradients": {"n_steps": 4}})
    trainer, _ = fit(tmp_path, lambda: torchvision_model(name), [monitor], size=64, n_train=8, limit_train_batches=2,
                     limit_val_batches=1)
    check_logged(trainer, monitor, ("grad_cam", "saliency", "integrated_gradients"))
    assert monitor.layer_name == "net." + {"fcn_resnet50": "classifier.2", "lraspp_mobilenet_v3_large": "classifier.cbr"}[name]


def test_every_method_runs_or_is_left_out_at_setup_with_its_cause(tmp_path):
    from attribution_helpers import FAST_OPTIONS

    from lightning_xai.attribution import available_methods

    methods = available_methods()
    monitor = ExplanationMonitor(num_probes=2, methods=methods, max_overhead=None, metrics=(),
                                 method_options={m: o for m, o in FAST_OPTIONS.items() if m in methods})
    with pytest.warns(UserWarning, match="left out") as warned:
        fit(tmp_path, TinyUNet, [monitor], max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    left_out = next(str(w.message) for w in warned if "left out" in str(w.message))
    assert set(monitor.config.methods) | {"cam", "attention_rollout", "transformer_attribution"} == set(methods)
    for m in ("cam", "attention_rollout", "transformer_attribution"):
        assert f"- {m}: " in left_out
    assert set(monitor.latest["maps"]) == set(monitor.config.methods)
    for m, maps in monitor.latest["maps"].items():
        assert bool(torch.isfinite(maps).all()), m


def test_training_is_bitwise_identical_with_and_without_the_monitor(tmp_path):
    trainer_a, model_a = fit(tmp_path / "a", TinyUNet)
    rng_a = torch.get_rng_state()
    monitor = ExplanationMonitor(num_probes=4, max_overhead=None,
                                 method_options={"integrated_gradients": {"n_steps": 4}})
    trainer_b, model_b = fit(tmp_path / "b", TinyUNet, [monitor])
    rng_b = torch.get_rng_state()
    assert len(monitor.history) == 2
    assert_same_training(trainer_a, model_a, rng_a, trainer_b, model_b, rng_b)
    assert trainer_a.callback_metrics["val_loss"] == trainer_b.callback_metrics["val_loss"]


def test_without_masks_the_mask_rule_fails_at_setup_and_the_predicted_rule_works(tmp_path):
    images = torch.stack([shapes(8)[i][0] for i in range(8)])
    maps = torch.stack([shapes(8)[i][1] for i in range(8)])
    train = DataLoader(TensorDataset(images, maps), batch_size=4)
    for segmentation, fails in ((None, True), ({"target": "predicted"}, False)):
        monitor = ExplanationMonitor(num_probes=2, probes=images[:4], methods=("grad_cam",), metrics=(),
                                     segmentation=segmentation)
        pl.seed_everything(0)
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=1))
        if fails:
            with pytest.raises(MisconfigurationException, match=r"no label masks.*segmentation=\{'target': 'predicted'\}"):
                trainer.fit(SegModule(TinyUNet()), train)
        else:
            trainer.fit(SegModule(TinyUNet()), train)
            assert len(monitor.history) == 1 and bool((monitor.latest["maps"]["grad_cam"] >= 0).all())


@pytest.mark.parametrize(("segmentation", "match"), [
    ({"target": "box"}, r"segmentation\['target'\]='box'.*one of \('mask', 'predicted'\)"),
    ({"background": -1}, r"segmentation\['background'\]=-1"),
    ({"class_index": 255}, r"segmentation\['class_index'\]=255.*other than"),
    ({"colour": 1}, r"segmentation\['colour'\]=1.*no such option"),
])
def test_bad_segmentation_options_fail_at_init(segmentation, match):
    with pytest.raises(ValueError, match=match):
        ExplanationMonitor(segmentation=segmentation)


def test_a_classifier_is_unaffected(tmp_path):
    monitor = ExplanationMonitor(num_probes=2, methods=("grad_cam",), metrics=())
    pl.seed_everything(7)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    assert monitor._rounds.explainer.segmentation is None and monitor.config.output_transform is None


def test_region_targets_explain_each_probe_for_its_own_region():
    net = TinyUNet().eval()
    data = shapes(2, size=32)
    x = torch.stack([data[i][0] for i in range(2)])
    maps = torch.stack([data[i][1] for i in range(2)])
    classes = maps.flatten(1).amax(dim=1)
    regions = (maps == classes[:, None, None]).float()
    both = explain_detailed(net, x, torch.arange(2), ("saliency",), output_transform=RegionScores(classes, regions))
    for i in range(2):  # one probe at a time, its own region only: the same map
        alone = explain_detailed(net, x[i:i + 1], torch.tensor([0]), ("saliency",),
                                 output_transform=RegionScores(classes[i:i + 1], regions[i:i + 1]))
        torch.testing.assert_close(both.maps["saliency"][i:i + 1], alone.maps["saliency"])
    assert NUM_CLASSES == 3


def test_a_classifier_target_on_a_segmentation_model_fails_at_setup(tmp_path):
    monitor = ExplanationMonitor(num_probes=2, methods=("grad_cam",), metrics=(), target="pred")
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=1))
    train, val = loaders()
    with pytest.raises(MisconfigurationException, match=r"target='pred' applies to classifiers.*segmentation="):
        trainer.fit(SegModule(TinyUNet()), train, val)


def test_localisation_leaves_out_probes_without_ground_truth():
    from lightning_xai.metrics.registry import MeasureContext, get_measure

    maps = torch.zeros(3, 1, 4, 4)
    maps[:, 0, 0, 0] = 1.0  # every map points at the top-left pixel
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, 0, 0] = 1.0  # a hit; probe 1 misses; probe 2 has no ground truth (background only)
    masks[1, 0, 3, 3] = 1.0
    ctx = MeasureContext(("grad_cam",), {"grad_cam": maps}, torch.zeros(3, dtype=torch.long),
                         torch.zeros(3, dtype=torch.long), masks, {}, {}, 16)
    measure = get_measure("localisation")
    scalars = measure.compute(ctx).scalars
    assert scalars["xai/grad_cam/pointing_game"] == 0.5


def test_segmented_shapes_doctest():
    import doctest

    import lightning_xai.datasets.segmentation as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_configure_keeps_the_users_layer_and_transform_across_fits():
    from lightning_xai.callbacks._segmentation import SegmentationTargets

    def user(out):
        return out

    found = SegmentationTargets({"target": "mask", "background": 0}, user)
    found.layer = "net.dec"
    config = ExplanationMonitor(output_transform=user).config
    first, chosen = SegmentationTargets.configure(config, found)
    assert (first.layer, chosen) == ("net.dec", "net.dec")
    assert isinstance(first.output_transform, ClassScores) and first.output_transform.transform is user
    again, chosen = SegmentationTargets.configure(first, found, chosen)  # a second fit: no ClassScores of ClassScores
    assert again.output_transform.transform is user and again.layer == "net.dec"
    classifier, chosen = SegmentationTargets.configure(again, None, chosen)  # then a classifier: all the user's
    assert (classifier.output_transform, classifier.layer, chosen) == (user, None, None)
    mine, chosen = SegmentationTargets.configure(ExplanationMonitor(layer="net.enc").config, found)
    assert mine.layer == "net.enc" and chosen is None  # the user's layer wins
