"""Explanation-quality metrics on a briefly trained model, and their keys in a real Trainer run."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, make_images, trainer_kwargs
from tb_events import read_events

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import explain, to_heatmap
from lightning_xai.metrics import deletion_auc, sanity_similarity, spearman_similarity


class PositionalCNN(torch.nn.Module):
    """Conv features + a flatten/linear head, so the class can depend on *where* the evidence is."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1),
                                            torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 3))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def trained():
    """A CNN trained for 150 SGD steps on blobs whose column encodes the class (its own RNG stream throughout)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = PositionalCNN()
        images, labels = make_images(240, seed=11)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(150):
            idx = torch.arange(step * 16, step * 16 + 16) % 240
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    probes, probe_labels = make_images(12, seed=12)
    accuracy = (model(probes).argmax(1) == probe_labels).float().mean()
    assert accuracy >= 0.9, "the fixture must actually have learnt the task"
    return model, probes, probe_labels


def test_deletion_auc_of_trained_maps_beats_a_random_ranking(trained):
    model, images, labels = trained
    maps = explain(model, images, labels, n_steps=16)
    random_maps = torch.rand(images.shape[0], 1, *images.shape[-2:], generator=torch.Generator().manual_seed(0))
    random_auc = deletion_auc(model, images, labels, random_maps, perturbation="zero", steps=16)
    for method in ("grad_cam", "integrated_gradients"):
        auc = deletion_auc(model, images, labels, to_heatmap(maps[method]), perturbation="zero", steps=16)
        # removing the pixels the map ranks first kills the class probability faster than removing random ones
        assert auc.mean() < random_auc.mean() - 0.1, (method, auc.mean(), random_auc.mean())


def test_randomised_weights_change_gradcam_and_saliency_far_beyond_the_noise_floor(trained):
    model, images, labels = trained

    def explain_fn(m):
        return explain(m, images, labels, methods=("grad_cam", "saliency"), layer="features")

    noise_floor = sanity_similarity(model, explain_fn, num_layers=0)  # recomputing the same model
    randomised = sanity_similarity(model, explain_fn, num_layers=None, seed=1)
    for method in ("grad_cam", "saliency"):
        usable = ~noise_floor[method].isnan()  # NaN: an empty map (e.g. an all-negative CAM), never "similar"
        assert usable.sum() >= 4 and noise_floor[method][usable].min() > 0.999
        assert randomised[method].nanmean() < 0.5, (method, randomised[method])


def test_quality_keys_are_logged(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, method_options={"integrated_gradients": {"n_steps": 4, "tolerance": None}},
                                 metrics=("agreement", "faithfulness", "sanity"),
                                 metric_options={"faithfulness": {"steps": 4}}, max_overhead=None)
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings():  # the end-of-fit sanity check may warn about a method; only keys matter here
        warnings.simplefilter("ignore")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    scalars = read_events(trainer.logger.log_dir)["scalars"]
    for method in ("grad_cam", "saliency", "integrated_gradients"):
        assert len(scalars[f"xai/{method}/deletion_auc"]) == 2
        assert len(scalars[f"xai/{method}/insertion_auc"]) == 2
        steps = [s for s, _ in scalars[f"xai/{method}/sanity_similarity"]]
        assert steps == [trainer.global_step]  # at the end of fit (at the start it would compare two untrained models)
        assert all(0.0 <= v <= 1.0 for _, v in scalars[f"xai/{method}/deletion_auc"])
    assert len(scalars["xai/agreement/grad_cam_vs_saliency"]) == 2
    assert "xai/integrated_gradients/completeness_error_p90" in scalars
    similarity = spearman_similarity(monitor.latest["maps"]["grad_cam"], monitor.latest["maps"]["grad_cam"])
    assert torch.allclose(similarity, torch.ones_like(similarity))
