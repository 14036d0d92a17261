"""What the monitor costs (issue 15, callback side): `xai/overhead`, the one-line cost note, the `max_overhead`
budget and a fit start that costs no more than one regular round. No timings are asserted: shares are checked for
range and the budget with a limit no run can meet."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from pytorch_lightning.callbacks import Callback
from tb_events import read_events

from lightning_xai import ExplanationMonitor


def fit(tmp_path, callbacks, model=None, **overrides):
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model if model is not None else TinyCNN(), datamodule=TinyDataModule())
    return trainer


def test_overhead_is_logged_every_round_and_the_cost_is_said_once(tmp_path, caplog):
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"), metrics=())
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, [monitor], max_epochs=3)
    overhead = read_events(trainer.logger.log_dir)["scalars"]["xai/overhead"]
    assert [s for s, _ in overhead] == [4, 8, 12]
    assert all(0.0 < v < 1.0 for _, v in overhead)
    lines = [r.getMessage() for r in caplog.records if "one explanation round" in r.getMessage()]
    assert len(lines) == 1 and "every_n_epochs=" in lines[0] and "num_probes=" in lines[0]
    assert "xai/overhead" in trainer.callback_metrics


def test_max_overhead_spaces_the_rounds_and_says_so(tmp_path, caplog):
    # a budget of 0.1% is beyond any run's reach: after the first round the next one is many epochs away
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"), metrics=(), max_overhead=0.001)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, [monitor], max_epochs=4)
    assert [r["epoch"] for r in monitor.history] == [0]
    said = [r.getMessage() for r in caplog.records if "to stay within max_overhead=0.001" in r.getMessage()]
    assert len(said) == 1


class CountingCNN(TinyCNN):
    """Counts the images it evaluates outside training with gradients on (explanation passes), per phase."""

    def __init__(self):
        super().__init__()
        self.phase, self.evaluated = "setup", {}

    def forward(self, x):
        if not self.training and torch.is_grad_enabled():
            self.evaluated[self.phase] = self.evaluated.get(self.phase, 0) + x.shape[0]
        return super().forward(x)


class Phase(Callback):
    def on_train_start(self, trainer, pl_module):  # runs after the monitor's (callback order)
        pl_module.phase = "epoch0"

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.phase = "later"


def test_the_fit_start_costs_no_more_than_one_regular_round(tmp_path):
    model = CountingCNN()
    # the defaults: adaptive IG and the sanity check, which used to run at the start as well
    monitor = ExplanationMonitor(num_probes=6, metrics=("sanity",))

    class Start(Callback):
        def on_train_start(self, trainer, pl_module):  # before the monitor's
            pl_module.phase = "start"

    fit(tmp_path, [Start(), monitor, Phase()], model=model, max_epochs=1)
    start, epoch0 = model.evaluated["start"], model.evaluated["epoch0"]
    assert 0 < start <= epoch0, model.evaluated

