"""Methods added to the default selection where the model allows them (issue 24): attention rollout on a
class-token ViT with `methods` left at the default; nothing added (and nothing said) on other models or when
`methods` is given."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from tb_events import read_events
from test_monitor_transformer_methods import TinyViT

from lightning_xai import ExplanationMonitor
from lightning_xai.callbacks._config import AUTOMATIC_METHODS, DEFAULT_METHODS


def fit(tmp_path, model, monitor):
    pl.seed_everything(3, workers=True)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=TinyDataModule())
    return trainer, [str(w.message) for w in caught]


def test_attention_rollout_joins_the_defaults_on_a_class_token_vit(tmp_path):
    assert AUTOMATIC_METHODS == ("attention_rollout",)
    monitor = ExplanationMonitor(num_probes=3, metrics=())
    trainer, said = fit(tmp_path, TinyViT(), monitor)
    assert monitor.config.methods == (*DEFAULT_METHODS, "attention_rollout")
    assert not [s for s in said if "left out" in s], said
    events = read_events(trainer.logger.log_dir)
    assert "xai/attention_rollout/overlay" in events["images"]
    assert "xai/attention_rollout/stability" in events["scalars"]


def test_nothing_is_added_on_a_cnn_or_when_methods_are_given(tmp_path):
    monitor = ExplanationMonitor(num_probes=3, metrics=())
    _, said = fit(tmp_path / "cnn", TinyCNN(), monitor)
    assert monitor.config.methods == DEFAULT_METHODS
    assert not [s for s in said if "attention_rollout" in s], said
    given = ExplanationMonitor(num_probes=3, metrics=(), methods=("saliency",))
    fit(tmp_path / "vit", TinyViT(), given)
    assert given.config.methods == ("saliency",)
