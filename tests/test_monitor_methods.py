"""Every registered attribution method in a real Trainer run through ExplanationMonitor(methods=...)."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
from attribution_helpers import fast_options
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from tb_events import read_events

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import available_methods, get_method
from lightning_xai.callbacks._config import explain_options


def test_every_method_runs_in_a_real_trainer(tmp_path):
    # Methods for other kinds of model (vision transformers) run in their own Trainer test
    # (tests/test_monitor_transformer_methods.py).
    methods = tuple(m for m in available_methods() if get_method(m).requires is None)
    monitor = ExplanationMonitor(
        methods=methods, num_probes=3, metrics=(), max_overhead=None,  # every method, not only the cheap ones
        method_options={"integrated_gradients": {"n_steps": 4, "tolerance": None},
                        **fast_options(m for m in methods if m != "integrated_gradients")},
    )
    pl.seed_everything(7, workers=True)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    skipped = [str(w.message) for w in caught if "explanations are skipped" in str(w.message)]
    assert not skipped, skipped
    events = read_events(trainer.logger.log_dir)
    for m in methods:
        assert len(events["images"][f"xai/{m}/overlay"]) == 1, m
        values = events["scalars"].get(f"xai/{m}/stability", [])
        assert all(math.isfinite(v) for _, v in values), m
    assert monitor.layer_name is not None


def test_method_options_are_checked_at_init_and_routed():
    with pytest.raises(ValueError, match=r"`method_options\['occlusion'\]\['window'\]=0`: must be an int in \[1, 4096\]"):
        ExplanationMonitor(methods=("occlusion",), method_options={"occlusion": {"window": 0}})
    with pytest.raises(ValueError, match=r"`method_options\['smoothgrad'\]\['n_step'\]=3`: no such option"):
        ExplanationMonitor(methods=("smoothgrad",), method_options={"smoothgrad": {"n_step": 3}})
    monitor = ExplanationMonitor(methods=("layer_cam", "occlusion"), method_options={"occlusion": {"window": 4}})
    kwargs = explain_options(monitor.config, None, "features", None)
    assert kwargs["layer"] == "features"  # any CAM-family method gets the monitor's layer
    assert kwargs["options"] == {"occlusion": {"window": 4}}
