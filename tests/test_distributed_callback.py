"""ExplanationMonitor under real 2-process DDP on CPU (gloo): sharding, gather, rank-0 logging, agreement, failures.

Spawned workers return nothing to the test, so module-level callbacks (picklable) check things inside the workers'
hooks and write what they saw to one file per rank under ``out_dir``; the test reads those files back.

``strategy="ddp"`` relaunches ``sys.argv`` once per extra rank, which under pytest would start pytest again; as in
Lightning's own tests, the ``ddp`` case runs this module as a script in a subprocess (see ``main()`` at the bottom).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, TrainOnlyDataModule, trainer_kwargs
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from tb_events import read_events

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import explain, to_heatmap

METHODS = ("grad_cam", "saliency", "integrated_gradients")
N_STEPS = 4
TIMEOUT = 150  # seconds per multi-process test: a hang fails instead of blocking the suite


# ---------------------------------------------------------------------------------------------- worker-side helpers
class Recorder(Callback):
    """Placed after the monitor: records, on every rank, what the monitor produced and the context it ran in.

    Per rank and explained epoch it writes ``rank{r}_epoch{e}.pt`` with the xai entries of ``callback_metrics`` (also
    all-gathered and compared across ranks here, in the worker), the monitor's ``latest`` maps and targets, the probe
    ids, the model's weights and buffers at that moment, and the grad mode the hook ran under.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _monitor(self, trainer: pl.Trainer) -> ExplanationMonitor:
        return next(cb for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor))

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: str) -> None:
        monitor = self._monitor(trainer)
        epoch = trainer.current_epoch
        explained = monitor.latest is not None and monitor.latest["epoch"] == epoch
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("xai/")}
        # All ranks are in this hook: gather every rank's values (a collective on all ranks, not rank-zero code).
        keys = sorted(metrics)
        local = torch.tensor([metrics[k] for k in keys] + [float(explained)], dtype=torch.float64)
        gathered = trainer.strategy.all_gather(local)  # (world, len)
        same = bool(gathered.shape[0] == trainer.world_size and (gathered == gathered[0]).all())
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "hook": hook,
            "epoch": epoch,
            "explained": explained,
            "metrics": metrics,
            "metrics_same_on_all_ranks": same,
            "grad_enabled": torch.is_grad_enabled(),
            "inference_mode": torch.is_inference_mode_enabled(),
            "probe_ids": monitor.probe_set.ids.tolist(),
            "layer": monitor.layer_name,
            # the Integrated Gradients settings the monitor used, for the single-process reference
            "ig_options": {k: monitor.method_options["integrated_gradients"][k]
                           for k in ("n_steps", "tolerance", "max_steps")},
            "history_epochs": [h["epoch"] for h in monitor.history],
            "state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules()),
        }
        if explained:
            record["maps"] = {m: t.clone() for m, t in monitor.latest["maps"].items()}
            record["pred"] = monitor.latest["pred"].clone()
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}_epoch{epoch}.pt"))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, pl_module, "on_validation_epoch_end")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.num_val_batches == [] or not any(trainer.num_val_batches):  # no validation loop: explained here
            self._record(trainer, pl_module, "on_train_epoch_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}_done.json"), "w") as f:
            json.dump({"global_step": trainer.global_step, "epoch": trainer.current_epoch}, f)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not torch.distributed.is_initialized():  # the ddp_spawn parent (rank 0 too) re-raising a worker's error
            return
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}_exception.txt"), "w") as f:
            f.write(f"{type(exception).__name__}: {exception}")


class FailingCNN(TinyCNN):
    """Raises in forward on rank ``fail_rank`` while the monitor explains (eval mode, gradients on) at ``fail_epoch``.

    Training forwards (train mode), validation (no_grad under gloo) and the monitor's setup check (no_grad) pass.
    """

    def __init__(self, fail_rank: int = 1, fail_epoch: int = 1) -> None:
        super().__init__()
        self.fail_rank, self.fail_epoch = fail_rank, fail_epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trainer = self._trainer
        if (trainer is not None and not self.training and torch.is_grad_enabled()
                and trainer.global_rank == self.fail_rank and trainer.current_epoch == self.fail_epoch):
            raise RuntimeError(f"injected failure on rank {self.fail_rank}")
        return super().forward(x)


def ddp_trainer(out_dir: str, monitor: ExplanationMonitor, strategy: str = "ddp_spawn", logger: bool = True,
                **overrides) -> pl.Trainer:
    settings = dict(devices=2, strategy=strategy, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                    num_sanity_val_steps=0, deterministic=False)
    kwargs = trainer_kwargs(out_dir, **{**settings, **overrides})
    if not logger:
        kwargs["logger"] = False
    return pl.Trainer(callbacks=[monitor, Recorder(out_dir)], **kwargs)


def make_monitor(num_probes: int, **kwargs) -> ExplanationMonitor:
    kwargs.setdefault("max_overhead", None)  # every method every epoch (the default budget spaces IG)
    return ExplanationMonitor(num_probes=num_probes, method_options={"integrated_gradients": {"n_steps": N_STEPS}}, **kwargs)


# ---------------------------------------------------------------------------------------------- parent-side checks
def load_records(out_dir: Path) -> dict[tuple[int, int], dict]:
    records = {}
    for path in sorted(out_dir.glob("rank*_epoch*.pt")):
        rec = torch.load(path, weights_only=False)
        records[(rec["rank"], rec["epoch"])] = rec
    return records


def single_process_maps(record: dict, num_probes: int) -> dict[str, torch.Tensor]:
    """``explain`` in this process, on rank 0's weights at that epoch, for the same probes and targets."""
    validation = record["hook"] == "on_validation_epoch_end"
    datamodule = TinyDataModule() if validation else TrainOnlyDataModule()
    datamodule.setup("fit")
    images, labels = (datamodule.val_set if validation else datamodule.train_set).tensors
    ids = torch.tensor(record["probe_ids"])
    assert ids.numel() == num_probes
    model = TinyCNN()
    model.load_state_dict(record["state_dict"])
    model.eval()
    maps = explain(model, images[ids], labels[ids], METHODS, layer=record["layer"], **record["ig_options"])
    return {m: to_heatmap(t) for m, t in maps.items()}


def check_run(out_dir: Path, num_probes: int, epochs: int = 2, log_dir: Path | None = None) -> dict:
    records = load_records(out_dir)
    assert sorted(records) == [(r, e) for r in range(2) for e in range(epochs)], sorted(records)
    for (rank, epoch), rec in records.items():
        assert rec["world_size"] == 2
        assert rec["explained"], (rank, epoch)
        if rec["hook"] == "on_validation_epoch_end":
            # gloo validation runs under no_grad, not inference_mode: the DDP path of the monitor.
            assert rec["grad_enabled"] is False and rec["inference_mode"] is False
        assert rec["metrics_same_on_all_ranks"], (rank, epoch, rec["metrics"])
        assert "xai/grad_cam/stability" in rec["metrics"]
        assert rec["history_epochs"] == list(range(epoch + 1))
        other = records[(1 - rank, epoch)]
        assert rec["metrics"] == other["metrics"]
        assert rec["probe_ids"] == other["probe_ids"] and len(rec["probe_ids"]) == num_probes
        for m in METHODS:
            assert rec["maps"][m].shape[0] == num_probes
            assert torch.equal(rec["maps"][m], other["maps"][m])  # the gathered maps are the same on every rank
        assert torch.equal(rec["pred"], other["pred"])
    for epoch in range(epochs):
        rec = records[(0, epoch)]
        expected = single_process_maps(rec, num_probes)
        for m in METHODS:
            torch.testing.assert_close(rec["maps"][m], expected[m], atol=1e-4, rtol=0, msg=f"{m} epoch {epoch}")
    if log_dir is not None:
        events = read_events(log_dir)
        assert len(events["files"]) == 1, events["files"]
        steps = sorted(r["epoch"] for r in records.values() if r["rank"] == 0)
        for m in METHODS:
            overlays = events["images"][f"xai/{m}/overlay"]
            assert len(overlays) == epochs, (m, [o[0] for o in overlays])
            assert len({o[0] for o in overlays}) == epochs  # one per logged epoch, distinct steps
            assert len(events["scalars"][f"xai/{m}/stability"]) == epochs
        assert len(events["texts"]["xai/drift"]) == epochs
        assert steps == list(range(epochs))
    return records


# ---------------------------------------------------------------------------------------------- ddp_spawn
NO_TWO_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="needs 2 CUDA devices: torch DDP refuses SyncBatchNorm on CPU modules ('SyncBatchNorm layers only work "
    "with GPU modules'), so a CPU/gloo run cannot have one",
)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize(
    ("num_probes", "sync_batchnorm"),
    [(5, False), (7, False), pytest.param(7, True, marks=NO_TWO_GPUS)],
    ids=["5", "7", "7-syncbn-cuda"],
)
def test_ddp_spawn_matches_single_process(tmp_path, num_probes, sync_batchnorm):
    """Uneven shards (3+2, 4+3); with SyncBatchNorm (CUDA only) the model trains another epoch after each
    explanation."""
    epochs = 3 if sync_batchnorm else 2
    device = {"accelerator": "gpu"} if sync_batchnorm else {}
    trainer = ddp_trainer(str(tmp_path), make_monitor(num_probes), sync_batchnorm=sync_batchnorm, max_epochs=epochs,
                          **device)
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    records = check_run(tmp_path, num_probes, epochs=epochs, log_dir=tmp_path / "tb")
    for rank in range(2):
        done = json.loads((tmp_path / f"rank{rank}_done.json").read_text())
        assert done["global_step"] == 2 * epochs  # trained through every epoch, explained after each
        assert not (tmp_path / f"rank{rank}_exception.txt").exists()
    assert all(rec["sync_batchnorm"] == sync_batchnorm for rec in records.values())
    w = "features.0.weight"  # training went on after each explanation
    assert not torch.equal(records[(0, epochs - 2)]["state_dict"][w], records[(0, epochs - 1)]["state_dict"][w])


@pytest.mark.timeout(TIMEOUT)
def test_ddp_spawn_without_validation_loop(tmp_path):
    """Explained at on_train_epoch_end, where each rank's BatchNorm running stats differ (DDP syncs them only at the
    next forward): every shard must still be explained with rank 0's, and each rank's own come back."""
    trainer = ddp_trainer(str(tmp_path), make_monitor(5), limit_val_batches=0)
    trainer.fit(TinyCNN(), datamodule=TrainOnlyDataModule())
    records = check_run(tmp_path, 5, log_dir=tmp_path / "tb")
    assert all(rec["hook"] == "on_train_epoch_end" for rec in records.values())
    # the ranks' running stats really differ here (so the check above is not vacuous) and were left as they were
    sd0, sd1 = records[(0, 1)]["state_dict"], records[(1, 1)]["state_dict"]
    assert not torch.equal(sd0["features.1.running_mean"], sd1["features.1.running_mean"])


# ---------------------------------------------------------------------------------------------- ddp (script launcher)
@pytest.mark.timeout(TIMEOUT)
def test_ddp_script_matches_single_process(tmp_path):
    num_probes = 7
    proc = run_script(tmp_path, num_probes, "ok")
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_run(tmp_path, num_probes, log_dir=tmp_path / "tb")


def run_script(out_dir: Path, num_probes: int, mode: str) -> subprocess.CompletedProcess:
    """This module as a script under ``strategy="ddp"``; returns when every rank has exited (they share the pipes)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    return subprocess.run([sys.executable, __file__, str(out_dir), str(num_probes), mode], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT - 20, cwd=str(out_dir))


def main(out_dir: str, num_probes: int, mode: str) -> None:
    """Every rank of ``strategy="ddp"`` executes this (the launcher starts rank 1 with the same command line)."""
    warnings.filterwarnings("ignore")
    if mode == "ok":
        trainer = ddp_trainer(out_dir, make_monitor(num_probes), strategy="ddp")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    elif mode == "raise":
        trainer = ddp_trainer(out_dir, make_monitor(num_probes, on_error="raise"), strategy="ddp", max_epochs=3)
        trainer.fit(FailingCNN(fail_rank=1, fail_epoch=1), datamodule=TinyDataModule())
    else:
        raise ValueError(mode)


def test_sync_batchnorm_model_explains_like_batchnorm_without_collectives():
    """CPU stand-in for the CUDA-only SyncBatchNorm DDP run: the monitor explains in eval mode, where SyncBatchNorm
    uses its running statistics and calls no collective (none is initialised here: one would raise)."""
    model = TinyCNN().eval()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(TinyCNN()).eval()
    synced.load_state_dict(model.state_dict())
    assert isinstance(synced.features[1], torch.nn.SyncBatchNorm)
    assert not torch.distributed.is_initialized()
    images, labels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(4) % 3
    expected = explain(model, images, labels, METHODS, layer="features.4", n_steps=N_STEPS)
    actual = explain(synced, images, labels, METHODS, layer="features.4", n_steps=N_STEPS)
    for m in METHODS:
        torch.testing.assert_close(actual[m], expected[m], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- failures on one rank
@pytest.mark.timeout(TIMEOUT)
def test_failure_on_one_rank_skips_epoch_on_all_ranks(tmp_path):
    """Also without a TensorBoard logger: the PNG fallback is set up on rank 0 alone, with no collective there
    (``trainer.log_dir`` broadcasts: calling it from rank-zero-only code aborted gloo with a collective mismatch)."""
    trainer = ddp_trainer(str(tmp_path), make_monitor(5, on_error="warn"), max_epochs=3, logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(FailingCNN(fail_rank=1, fail_epoch=1), datamodule=TinyDataModule())
    records = load_records(tmp_path)
    assert sorted(records) == [(r, e) for r in range(2) for e in range(3)]
    for rank in range(2):
        assert [records[(rank, e)]["explained"] for e in range(3)] == [True, False, True], rank
        assert records[(rank, 2)]["history_epochs"] == [0, 2]
        assert records[(rank, 2)]["metrics_same_on_all_ranks"]
        done = json.loads((tmp_path / f"rank{rank}_done.json").read_text())
        assert done["global_step"] == 6  # training went on through the failed epoch
    overlays = [p for p in tmp_path.rglob("*.png") if "grad_cam_overlay" in str(p.relative_to(tmp_path))]
    assert len(overlays) == 2, overlays  # epochs 0 and 2 only, written once (rank 0)
    timelines = [p for p in tmp_path.rglob("*.png") if "grad_cam_timeline" in str(p.relative_to(tmp_path))]
    assert len(timelines) == 1, timelines  # at the end of fit, once (rank 0)


@pytest.mark.timeout(TIMEOUT)
def test_failure_on_one_rank_raises_on_all_ranks(tmp_path):
    """on_error="raise": both ranks raise, none waits for the other. Run with ``strategy="ddp"``: ddp_spawn workers
    run fit outside Lightning's exception handler (no ``on_exception`` there) and the parent kills the surviving
    worker as soon as one dies, so only the script launcher lets each rank report its own exception."""
    proc = run_script(tmp_path, 5, "raise")
    assert proc.returncode != 0
    assert "ExplanationMonitor failed at epoch 1" in proc.stderr
    for rank in range(2):
        text = (tmp_path / f"rank{rank}_exception.txt").read_text()
        assert text.startswith("RuntimeError: ExplanationMonitor failed at epoch 1"), (rank, text)
        assert not (tmp_path / f"rank{rank}_done.json").exists()
    assert "another rank" in (tmp_path / "rank0_exception.txt").read_text()
    assert "injected failure on rank 1" in (tmp_path / "rank1_exception.txt").read_text()
    assert sorted(load_records(tmp_path)) == [(0, 0), (1, 0)]  # epoch 0 explained, then both stopped at epoch 1


# ---------------------------------------------------------------------------------------------- sharded strategies
class MyFSDPStrategy(FSDPStrategy):
    """A user's subclass: refused like its base."""


# DeepSpeed is not installed here: a stand-in with its class name checks that path of the refusal.
DeepSpeedStrategy = type("DeepSpeedStrategy", (DDPStrategy,), {})


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, MyFSDPStrategy, DeepSpeedStrategy])
def test_fsdp_is_refused_in_setup(strategy_cls):
    """Lightning itself refuses FSDP on CPU when the Trainer is built (before any callback hook), so the monitor's
    setup() is called directly with a stand-in trainer holding a real, CPU-constructible FSDPStrategy."""
    if strategy_cls is FSDPStrategy:
        with pytest.raises(ValueError, match="requires a GPU"):  # why a real CPU Trainer cannot reach setup()
            pl.Trainer(accelerator="cpu", devices=1, strategy="fsdp", logger=False)
    trainer = SimpleNamespace(strategy=strategy_cls(), callbacks=[])
    with pytest.raises(MisconfigurationException,
                       match=rf"does not support strategy {strategy_cls.__name__}.*strategy='ddp'"):
        make_monitor(4, probes=torch.zeros(4, 3, 16, 16)).setup(trainer, TinyCNN(), "fit")


def test_ddp_strategy_is_accepted_in_setup():
    trainer = SimpleNamespace(strategy=DDPStrategy(), callbacks=[], world_size=1)
    monitor = make_monitor(4, probes=(torch.zeros(4, 3, 16, 16), torch.arange(4) % 3))
    monitor.setup(trainer, TinyCNN(), "fit")
    assert len(monitor.probe_set) == 4


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
