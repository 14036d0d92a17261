"""Every alarm path of the drift detector through a real Trainer, on a model whose explanations we control.

``TemplateModel`` scores class ``c`` as the image correlated with a spatial template ``T_c`` (plus a small
image-dependent term), so its saliency map on any image is ``|T_c|``-shaped. The optimiser's learning rate is 0; a
callback sets the templates at each epoch start from a schedule: a small seeded jitter every epoch (the run's noise)
and, from a chosen epoch, the change under test. The training data can change too (a cue in the training images
only). No mocks: the monitor, its detection pool, the detector and the logger are the real ones.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_xai import ExplanationMonitor

S = 12  # image side
K = 4  # classes
N_TRAIN, N_VAL = 64, 48


def _blob(cx: float, cy: float, width: float = 0.12) -> torch.Tensor:
    coords = (torch.arange(S) + 0.5) / S
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))


CENTRE = [(0.4, 0.45), (0.55, 0.4), (0.45, 0.6), (0.6, 0.55)]  # where each class's evidence normally lies
CORNERS = [(0.08, 0.08), (0.92, 0.08), (0.08, 0.92), (0.92, 0.92)]


class TemplateModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.templates = nn.Parameter(torch.stack([_blob(*CENTRE[c]) for c in range(K)]))  # (K, S, S)
        self.mix = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.fill_(1.0 / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.mix(x)[:, 0]  # (N, S, S)
        # the template term, plus a response to unusually bright pixels anywhere (as conv filters respond to a
        # new pattern): a cue in the images shows in their saliency even before the model relies on it
        bright = nn.functional.relu(g - 1.5).square().mean((1, 2))[:, None]
        return (g[:, None] * self.templates[None]).mean((2, 3)) + 0.5 * bright

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Images(Dataset):
    """Random images with labels (and object masks around each class's usual place); ``cue`` adds a bright corner
    patch coded by class, as a change of the data from that epoch on."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = 0.5 + 0.2 * torch.randn(n, 3, S, S, generator=g)
        self.labels = torch.arange(n) % K
        self.cue = False

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i].clone()
        c = int(self.labels[i])
        if self.cue:
            x, y = (int(v * (S - 3)) for v in CORNERS[c])
            image[:, y:y + 3, x:x + 3] = 3.0
        mask = (_blob(*CENTRE[c]) > 0.3).float()[None]
        return {"image": image, "label": c, "mask": mask}


class Schedule(pl.Callback):
    """Sets the templates at each epoch start: ``where(epoch, c) -> (cx, cy) or None`` (None: the usual place),
    plus a seeded jitter; optionally plants the training cue and steps the learning rate."""

    def __init__(self, where, *, jitter: float = 0.12, cue_from: int | None = None, train: Images | None = None,
                 lr_step_at: int | None = None) -> None:
        self.where, self.jitter, self.cue_from, self.train, self.lr_step_at = where, jitter, cue_from, train, lr_step_at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        g = torch.Generator().manual_seed(100 + epoch)
        rows = []
        for c in range(K):
            centre = self.where(epoch, c) or CENTRE[c]
            base = _blob(*centre)
            rows.append(base * (1 + self.jitter * torch.randn(S, S, generator=g)).clamp_min(0.05))
        with torch.no_grad():
            pl_module.templates.copy_(torch.stack(rows))
        if self.train is not None and self.cue_from is not None:
            self.train.cue = epoch >= self.cue_from
        if self.lr_step_at is not None and epoch == self.lr_step_at:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e-6  # 0 -> 1e-6: a learning-rate step the monitor reports as an event


def run(tmp_path, where, *, epochs: int = 9, masks: bool = False, cue_from: int | None = None,
        lr_step_at: int | None = None, **drift):
    train, val = Images(N_TRAIN, 0), Images(N_VAL, 1)
    reports = []
    monitor = ExplanationMonitor(
        num_probes=8, methods=("saliency",), metrics=(), log_images=False, on_drift=reports.append,
        drift={"warmup_epochs": 3, "pool_size": 32, **drift},
        probe_options={"mask_key": "mask" if masks else (lambda item: None)})
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[Schedule(where, cue_from=cue_from, train=train, lr_step_at=lr_step_at),
                                    monitor])
    if lr_step_at is not None:  # a step from a tiny positive rate, so the monitor sees a ratio
        model = TemplateModel()
        model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=1e-9)
    else:
        model = TemplateModel()
    trainer.fit(model, DataLoader(train, batch_size=16), DataLoader(val, batch_size=16))
    alarms = [r["epoch"] for r in monitor.history if r["alarm"]]
    return alarms, reports, monitor


def test_quiet_run_never_alarms(tmp_path):
    alarms, _, monitor = run(tmp_path, lambda e, c: None, epochs=10)
    assert alarms == []
    assert monitor.drift_detector.num_samples == 8 + 32  # display probes + the pool
    assert monitor.drift_detector.methods["saliency"].prev.shape[0] == 40


def test_sudden_move_alarms_at_that_epoch(tmp_path):
    alarms, reports, _ = run(tmp_path, lambda e, c: (0.85, 0.85) if e >= 5 else None)
    assert alarms == [5]
    assert reports[0].evidence["sudden"] >= 1.0
    assert "converged" in reports[0].details() or "bottom-right" in reports[0].details()


def test_class_coded_move_is_told_per_class(tmp_path):
    alarms, reports, _ = run(tmp_path, lambda e, c: CORNERS[c] if e >= 5 else None)
    assert alarms == [5]
    text = reports[0].details()
    assert "each class" in text or "Per class" in text


def test_slide_is_accumulated(tmp_path):
    def slide(e, c):  # the evidence creeps towards the top-left corner, a little every epoch from epoch 4
        if e < 4:
            return None
        t = min(1.0, 0.12 * (e - 3))
        return (CENTRE[c][0] * (1 - t) + 0.1 * t, CENTRE[c][1] * (1 - t) + 0.1 * t)

    alarms, reports, _ = run(tmp_path, slide, epochs=10, masks=True)
    assert alarms and 4 <= alarms[0] <= 8, alarms


def test_evidence_leaving_the_object_is_the_mass_path(tmp_path):
    alarms, reports, _ = run(tmp_path, lambda e, c: (0.1, 0.9) if e >= 5 else None, masks=True)
    assert alarms == [5]
    assert any("mass" in key for key in reports[0].scores["saliency"] if reports[0].scores["saliency"][key] >= 1)


def test_training_only_cue_is_seen_on_the_training_samples(tmp_path):
    # the model does not change; only the training images get a cue: the pool's training part sees it
    alarms, reports, _ = run(tmp_path, lambda e, c: None, cue_from=5)
    assert alarms and alarms[0] == 5, alarms
    strongest = reports[0].strongest()
    assert strongest and "training" in strongest[0][1]


def test_learning_rate_step_alone_is_not_drift_but_a_change_with_it_is(tmp_path):
    alarms, _, _ = run(tmp_path, lambda e, c: None, lr_step_at=5)
    assert alarms == []
    alarms, reports, _ = run(tmp_path, lambda e, c: (0.85, 0.85) if e >= 5 else None, lr_step_at=5)
    assert alarms == [5]
    assert reports[0].event and "learning rate" in reports[0].event
    assert math.isfinite(reports[0].evidence["sudden"])
