"""The default budget (issue 21): cheap methods every explained epoch, the expensive ones when the run has paid for
them. The budget's arithmetic is tested with made-up seconds; in Trainer runs the credit is set by a test callback
(no test depends on how fast this machine is)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from tb_events import read_events

from lightning_xai import ExplanationMonitor
from lightning_xai.callbacks._budget import AUTO_SHARE, CostBudget

FIXED_IG = {"integrated_gradients": {"n_steps": 4, "tolerance": None}}


# ------------------------------------------------------------------------------------------- the budget alone
def test_credit_is_earned_by_training_and_spent_by_the_monitor():
    budget = CostBudget(0.1)
    assert budget.available() == 0.0 and not budget.allow("integrated_gradients", 0.01)
    budget.account(train_seconds=10.0, spent_seconds=0.4)
    assert budget.available() == pytest.approx(0.6)
    assert not budget.allow("integrated_gradients", 0.7)
    assert budget.allow("pool", 0.5)  # reserved until the next account(): a second ask cannot spend it again
    assert budget.available() == pytest.approx(0.1) and not budget.allow("views", 0.2)
    budget.account(train_seconds=10.0, spent_seconds=0.9)  # what the pool really cost replaces its estimate
    assert budget.available() == pytest.approx(0.7)
    assert budget.allowed == {"pool": 1} and budget.denied == {"integrated_gradients": 2, "views": 1}
    budget.reset()
    assert budget.available() == 0.0 and budget.last("pool") is None and not budget.allowed


def test_estimates_come_from_measured_passes():
    budget = CostBudget(AUTO_SHARE)
    assert budget.row_seconds is None and budget.estimate_rows(32) is None
    assert not budget.allow("integrated_gradients", None)  # nothing measured: nothing optional yet
    budget.record("cheap", 0.08, rows=16)  # 16 probes through Grad-CAM + saliency
    assert budget.row_seconds == pytest.approx(0.005)
    assert budget.estimate_rows(64) == pytest.approx(0.32)  # e.g. 64 extra samples through the cheap methods
    budget.record("integrated_gradients", 1.2)
    assert budget.last("integrated_gradients") == 1.2 and budget.row_seconds == pytest.approx(0.005)
    budget.record("views", float("nan"))  # never a non-finite estimate
    assert budget.last("views") is None


def test_no_share_allows_everything():
    budget = CostBudget(None)
    assert budget.available() == math.inf and budget.allow("integrated_gradients", None)
    with pytest.raises(ValueError, match="share"):
        CostBudget(1.5)


@pytest.mark.parametrize("value", ["fast", 0.0, 1.0, -0.1])
def test_max_overhead_is_checked(value):
    with pytest.raises(ValueError, match="max_overhead.*'auto'"):
        ExplanationMonitor(max_overhead=value)


# ------------------------------------------------------------------------------------------- in a Trainer
class Credit(Callback):
    """Before the monitor's round (listed first), gives the budget plenty of credit at the epochs in ``grant`` and
    none at the others: the schedule then depends on the test, not on this machine's speed."""

    def __init__(self, monitor: ExplanationMonitor, grant: set[int]) -> None:
        self.monitor, self.grant = monitor, grant

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        budget = self.monitor.budget
        if budget.share is None:  # no budget: nothing to give or take
            return
        if trainer.current_epoch in self.grant:  # 1e6 s of credit, whatever was spent before
            budget.account(train_seconds=(budget.spent + 1e6) / budget.share - budget.trained, spent_seconds=0.0)
        else:  # 1e6 s in debt
            budget.account(train_seconds=0.0, spent_seconds=budget.share * budget.trained - budget.spent + 1e6)


def fit(tmp_path, callbacks, max_epochs, **overrides):
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, max_epochs=max_epochs, **overrides))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    return trainer


def test_auto_explains_the_cheap_methods_every_epoch_and_integrated_gradients_when_paid_for(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, method_options=FIXED_IG)  # max_overhead="auto", the default
    trainer = fit(tmp_path, [Credit(monitor, grant={1, 2}), monitor], max_epochs=4)
    events = read_events(trainer.logger.log_dir)
    steps = [4, 8, 12, 16]
    for m in ("grad_cam", "saliency"):  # the contract: their keys from the first explained epoch on
        assert [s for s, _ in events["scalars"][f"xai/{m}/stability"]] == steps
        assert [s for s, *_ in events["images"][f"xai/{m}/overlay"]] == steps
    ig = "integrated_gradients"
    assert [s for s, *_ in events["images"][f"xai/{ig}/overlay"]] == [8, 12]  # only when the budget allowed it
    assert [s for s, _ in events["scalars"][f"xai/{ig}/completeness_error"]] == [8, 12]
    # stability compares with IG's previous frame: none before training (the reference is cheap), so from its 2nd run
    assert [s for s, _ in events["scalars"][f"xai/{ig}/stability"]] == [12]
    assert [sorted(r["stability"]) for r in monitor.history] == [
        ["grad_cam", "saliency"], ["grad_cam", "integrated_gradients", "saliency"],
        ["grad_cam", "integrated_gradients", "saliency"], ["grad_cam", "saliency"]]
    assert monitor.budget.allowed[ig] == 2 and monitor.budget.denied[ig] == 2
    assert sorted(monitor.latest["maps"]) == ["grad_cam", "saliency"]
    # what the lead's detection pool sizes itself with: one sample through the cheap methods, measured
    assert monitor.budget.row_seconds is not None and monitor.budget.row_seconds > 0
    assert monitor.budget.last(ig) is not None and monitor.budget.last(ig) > 0
    # the sanity check at the end explains what the last round explained
    assert f"xai/{ig}/sanity_similarity" not in events["scalars"]
    assert "xai/grad_cam/sanity_similarity" in events["scalars"]


def test_a_method_another_callback_watches_runs_every_explained_epoch(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, method_options=FIXED_IG, metrics=())
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="xai/integrated_gradients/stability", mode="max")
    trainer = fit(tmp_path, [Credit(monitor, grant=set()), monitor, ckpt], max_epochs=2, enable_checkpointing=True)
    events = read_events(trainer.logger.log_dir)
    # in the reference round too, so its stability exists from the first explained epoch, however short the credit
    assert [s for s, _ in events["scalars"]["xai/integrated_gradients/stability"]] == [4, 8]
    assert not monitor.budget.denied


def test_no_budget_explains_every_method_at_every_epoch(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, method_options=FIXED_IG, metrics=(), max_overhead=None)
    trainer = fit(tmp_path, [Credit(monitor, grant=set()), monitor], max_epochs=2)
    events = read_events(trainer.logger.log_dir)
    for m in ("grad_cam", "saliency", "integrated_gradients"):
        assert [s for s, _ in events["scalars"][f"xai/{m}/stability"]] == [4, 8]


def test_views_run_at_the_first_explained_epoch_then_when_paid_for(tmp_path):
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam",), metrics=(), views=("activations",))
    fit(tmp_path, [Credit(monitor, grant={2}), monitor], max_epochs=4)
    assert [r["epoch"] for r in monitor.views_history] == [0, 2]
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2, 3]  # the heatmaps every epoch
    assert monitor.budget.last("views") is not None


def test_the_budgeted_schedule_changes_nothing_in_training(tmp_path):
    # the default schedule (a cheap pass, then IG in a pass of its own when granted) is still only an observer
    import torch

    plain = fit(tmp_path / "a", [], max_epochs=3)
    rng_a = torch.get_rng_state()
    monitor = ExplanationMonitor(num_probes=4, method_options=FIXED_IG)
    watched = fit(tmp_path / "b", [Credit(monitor, grant={1}), monitor], max_epochs=3)
    assert torch.equal(rng_a, torch.get_rng_state())
    assert [sorted(r["stability"]) for r in monitor.history][1] == ["grad_cam", "integrated_gradients", "saliency"]
    state_a, state_b = plain.lightning_module.state_dict(), watched.lightning_module.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    opt_a, opt_b = plain.optimizers[0].state_dict()["state"], watched.optimizers[0].state_dict()["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)


# ------------------------------------------------------------------------------------------- the detection pool
def test_the_pool_takes_the_methods_the_registry_calls_cheap_with_their_options():
    from lightning_xai.callbacks._pool import cheap_methods

    methods = ("grad_cam", "integrated_gradients", "saliency", "smoothgrad")
    assert cheap_methods(methods) == ("grad_cam", "saliency")
    # one noisy sample makes SmoothGrad a one-pass method; the monitor's own keys are not the method's options
    options = {"smoothgrad": {"n_samples": 1}, "grad_cam": {"internal_batch_size": 8}}
    assert cheap_methods(methods, options, (32, 32)) == ("grad_cam", "saliency", "smoothgrad")


def test_the_pool_size_the_budget_pays_for():
    from lightning_xai.callbacks._pool import POOL_BUDGET_SHARE, budget_pool_rows

    assert budget_pool_rows(None, 2048, 16) is None and budget_pool_rows(0.05, None, 16) is None
    assert budget_pool_rows(0.05, 2048, 16) == int(POOL_BUDGET_SHARE * 0.05 * 2048 - 16)
    assert budget_pool_rows(0.05, 2048, 16, every_n_epochs=4) == int(POOL_BUDGET_SHARE * 0.05 * 4 * 2048 - 16)
    assert budget_pool_rows(0.05, 256, 16) == 0  # a short run: the display probes alone fill the share
    assert budget_pool_rows(0.05, 2048, 16 * 17) == 0  # a pinned Integrated Gradients pass takes it all


def _pool_fit(tmp_path, **monitor_kwargs):
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"), metrics=(), log_images=False,
                                 **monitor_kwargs)
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=None))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule(n_train=960, batch_size=32))
    return monitor


def test_an_auto_pool_is_sized_by_the_budget_and_tracked_unchanged(tmp_path, monkeypatch):
    from lightning_xai.callbacks import _pool
    from lightning_xai.callbacks._pool import budget_pool_rows

    floored = _pool_fit(tmp_path / "floor")  # 60 chosen, below the floor of 64: detection keeps them all
    # 60 chosen, and all that the data has of them kept (30 training + the 20 validation samples besides the probes)
    assert floored._pool.chosen == 60 and floored._pool.size == 50 and floored._pool.budget_note is None
    monkeypatch.setattr(_pool, "AUTO_BUDGET_FLOOR", 8)  # a small floor: the budget decides
    monitor = _pool_fit(tmp_path / "auto")  # max_overhead="auto": 960 image-steps an epoch pay for 20 samples
    expected = budget_pool_rows(AUTO_SHARE, 960, 4)
    assert expected == 20 and monitor._pool.size == expected and monitor._pool.chosen == 60
    assert monitor.drift_detector.num_samples == 4 + expected  # the reference and every round: the same rows
    assert monitor._pool.origin.tolist() == [0] * 10 + [1] * 10
    assert monitor.budget.last("pool") is not None and monitor.budget.last("pool") > 0
    assert "watches 20 samples besides the display probes instead of 60" in monitor._pool.budget_note
    unlimited = _pool_fit(tmp_path / "none", max_overhead=None)  # no budget: 1/16 of the training set
    # 30 training samples, and the 20 validation samples the 24 have besides the display probes
    assert unlimited._pool.size == 50 and unlimited.drift_detector.num_samples == 54
    fixed = _pool_fit(tmp_path / "fixed", drift={"pool_size": 32})  # a size the user asked for is kept
    assert fixed._pool.size == 32 and fixed.drift_detector.num_samples == 36
    assert unlimited._pool.budget_note is None and fixed._pool.budget_note is None


def test_a_pool_cut_to_a_resumed_checkpoints_size_keeps_both_parts_in_order():
    import torch

    from lightning_xai.callbacks._pool import DetectionPool
    from lightning_xai.probes import ProbeSet

    pool = DetectionPool(ExplanationMonitor().config)
    pool.extra_validation = ProbeSet(images=torch.rand(6, 3, 4, 4), labels=torch.arange(6) % 3, ids=torch.arange(6))
    pool.train_ids, pool.size, pool.pending = list(range(100, 106)), 12, True
    pool.fit(None)  # a fresh fit: as chosen
    assert pool.size == 12 and not pool.pending
    pool.fit(8)  # the checkpoint's detector tracks 8: the first samples of each part, in the same order
    assert pool.size == 8 and pool.extra_validation.ids.tolist() == [0, 1, 2, 3] and pool.train_ids == [100, 101, 102, 103]
    assert pool.origin.tolist() == [0] * 4 + [1] * 4
    pool.fit(0)
    assert pool.size == 0 and pool.extra_validation is None and not pool.enabled
