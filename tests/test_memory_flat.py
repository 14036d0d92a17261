"""The monitor's memory is flat over long runs (issue 20, item 8).

The growth of about 0.5 MB per epoch was found with ``tracemalloc`` (``bench/memory.py --long`` measures RSS over
300 epochs): the text renderer's line caches (4096 lines each, a new caption or title every epoch) and the timeline
(48 epochs of tiles). Both are bounded now (:data:`lightning_xai.render.text.TEXT_CACHE_LINES` lines; 16 epochs of
tiles, NumPy arrays that ``tracemalloc`` sees). Not timing-based: bytes alive, counted by ``tracemalloc``.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs

from lightning_xai import ExplanationMonitor
from lightning_xai.render import Timeline
from lightning_xai.render import text as text_module

WARM, END = 17, 25  # the timeline keeps 16 epochs: after WARM every bounded buffer is full


def _clear_text_caches() -> None:
    # bounded by construction (checked below); cleared so that the window measures what accumulates per epoch
    text_module._line_mask.cache_clear()
    text_module._text_patch.cache_clear()


def test_the_monitor_keeps_no_memory_per_epoch_after_warm_up(tmp_path):
    traced: dict[int, int] = {}
    kept: list[int] = []

    class Trace(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            monitor._reporter.finish_images()  # the overlays of the epoch are drawn on a background thread
            epoch = trainer.current_epoch
            if epoch == 0:
                tracemalloc.start(1)  # from here on, so that what is replaced later was traced when made
            if epoch in (WARM, END):
                _clear_text_caches()
                gc.collect()
                traced[epoch] = tracemalloc.get_traced_memory()[0]
            if epoch == END:
                tracemalloc.stop()
                kept.extend(monitor._reporter.timeline.epochs("grad_cam"))

    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"), metrics=())
    pl.seed_everything(7, workers=True)
    trainer = pl.Trainer(callbacks=[monitor, Trace()], **trainer_kwargs(
        tmp_path, max_epochs=END + 1, limit_train_batches=1, limit_val_batches=1, deterministic=False))
    try:
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    per_epoch = (traced[END] - traced[WARM]) / (END - WARM)
    # what stays is the history record of each epoch (a few floats per probe and method, by design): ~1.5 KB here;
    # the timeline at 48 epochs grew 96 KB per epoch, the text caches ~15 KB
    assert per_epoch < 6_000, per_epoch
    assert len(kept) == 16 and kept[0] == 0 and kept[-1] == END


def test_the_text_caches_are_bounded():
    from lightning_xai.render import caption

    _clear_text_caches()
    image = torch.zeros(3, 32, 64, dtype=torch.uint8)
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):  # a new caption every time, as probabilities and epoch titles are
            caption(image, [f"p=cat .{i:04d}", f"epoch {i}"])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert text_module._line_mask.cache_info().currsize <= text_module.TEXT_CACHE_LINES <= 512
    assert held < 2_000_000, held  # 4096 cached lines of each kind held ~10 MB here


def test_the_timeline_keeps_a_spread_of_epochs_within_its_cap():
    timeline = Timeline(max_columns=12)
    tiles = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    for epoch in range(300):
        timeline.add("grad_cam", epoch, tiles, flagged=[epoch == 150, False])
    kept = timeline.epochs("grad_cam")
    assert len(kept) == timeline.keep_epochs == 16
    assert {0, 150, 299} <= set(kept)  # the start, the change, the latest
    assert max(np.diff(kept)) <= 3 * 300 // 16  # spread over the whole run, not only its end
    assert timeline.nbytes == 16 * tiles.numel()
