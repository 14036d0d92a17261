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


def _record(epoch: int, g: torch.Generator, optional: bool) -> dict:
    """A record as the default monitor keeps one: 16 probes, Grad-CAM + saliency every epoch, IG when paid for."""
    methods = ("grad_cam", "saliency", "integrated_gradients") if optional else ("grad_cam", "saliency")
    record = {"epoch": epoch, "step": 4 * epoch, "alarm": epoch == 7}
    for key in ("stability", "topk_overlap"):
        record[key] = {m: torch.rand(16, generator=g).tolist() for m in methods}
    record["flags"] = {m: (torch.rand(16, generator=g) > 0.9).tolist() for m in methods}
    if optional:
        record["completeness_error"] = torch.rand(int(epoch % 16), generator=g).tolist()  # only the finite ones
    record["pred"] = torch.randint(0, 10, (16,), generator=g).tolist()
    return record


def test_the_history_keeps_a_few_bytes_per_value_and_reads_back_exactly():
    """The per-epoch record (issue 20, item 8: ~6 KiB per epoch as lists of Python floats) is held column by column
    in tensors; bounded growth per epoch, counted in bytes (not timed), and every record reads back unchanged."""
    import io

    from lightning_xai.callbacks._tracker import History

    g = torch.Generator().manual_seed(0)
    records = [_record(epoch, g, optional=epoch % 3 == 0) for epoch in range(300)]
    history = History()
    for record in records:
        history.append(record)
    assert history == records and history[-1] == records[-1] and history[10:12] == records[10:12]
    assert history.fields("stability") == {"grad_cam", "saliency", "integrated_gradients"}
    # numbers stored: 16 probes x (2 scalars + 1 flag) x 2-3 methods + pred + IG errors; 4 bytes a float, 1 a flag
    exact = sum(16 * len(r["stability"]) * 9 + 16 * 4 + 4 * len(r.get("completeness_error", [])) + 13 for r in records)
    assert history.nbytes() <= 2.2 * exact  # buffers grow by doubling, plus (start, length) per row and field
    assert history.nbytes() / len(records) < 1_200, history.nbytes() / len(records)

    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        as_lists = [_record(epoch, g, optional=epoch % 3 == 0) for epoch in range(300)]
        lists_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(as_lists) == 300 and history.nbytes() * 4 < lists_bytes, (history.nbytes(), lists_bytes)

    buffer = io.BytesIO()  # the checkpoint form: tensors and plain lists, loadable with weights_only=True
    torch.save(history.state_dict(), buffer)
    buffer.seek(0)
    restored = History.from_state(torch.load(buffer, weights_only=True))
    assert restored == records
    restored.append(records[0])
    assert restored[-1] == records[0] and History.from_state(records) == records  # older checkpoints: lists


def test_the_history_keeps_any_value_a_custom_measure_puts_in_a_record():
    from lightning_xai.callbacks._tracker import History

    records = [{"epoch": 0, "note": None, "values": [1, 2], "big": 2**40, "x": {}, "wide": [0.1]},
               {"epoch": 1, "note": "text", "values": [0.5, 2.5], "big": -(2**40), "x": {}, "wide": []},
               {"epoch": 2, "values": 3}]
    history = History(records)
    assert list(history) == records and isinstance(history[0]["wide"][0], float) and history[0]["wide"] == [0.1]
