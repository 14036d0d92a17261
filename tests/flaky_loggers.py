"""Test helper: TensorBoard loggers whose monitor writes fail, like a full disk (module level: DDP workers pickle them).

Only ``xai/`` tags fail; the Trainer's own logging goes through, so what is tested is the monitor's handling.
"""

from __future__ import annotations

import lightning.pytorch as L
import pytorch_lightning as pl


class FlakyWriter:
    """Wraps a ``SummaryWriter``: ``xai/`` images at ``fail_image_steps`` fail, every write of a tag in ``fail_tags``
    fails (a key a logger refuses), or every ``xai/`` write if ``broken``."""

    def __init__(self, real, fail_image_steps=(), broken: bool = False, fail_tags=()) -> None:
        self.real, self.fail_image_steps, self.broken = real, set(fail_image_steps), broken
        self.fail_tags = set(fail_tags)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def _get_file_writer(self):
        return _FlakyFileWriter(self, self.real._get_file_writer())

    def _check(self, tag, step, image=False):
        if tag.startswith("xai/") and (self.broken or (image and step in self.fail_image_steps)):
            raise OSError(f"No space left on device ({tag} at step {step})")
        if tag in self.fail_tags:
            raise ValueError(f"tag {tag!r} refused by the logger")

    def add_image(self, tag, img, global_step=None, dataformats="CHW"):
        self._check(tag, global_step, image=True)
        self.real.add_image(tag, img, global_step=global_step, dataformats=dataformats)

    def add_scalar(self, tag, value, global_step=None, **kwargs):
        self._check(tag, global_step)
        self.real.add_scalar(tag, value, global_step=global_step, **kwargs)

    def add_text(self, tag, text, global_step=None):
        self._check(tag, global_step)
        self.real.add_text(tag, text, global_step=global_step)


class _FlakyFileWriter:
    """The event file writer: summaries carrying ``xai/`` images are checked like ``add_image``."""

    def __init__(self, owner: FlakyWriter, real) -> None:
        self.owner, self.real = owner, real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def add_summary(self, summary, global_step=None, walltime=None):
        for value in getattr(summary, "value", []):
            if value.HasField("image"):
                self.owner._check(value.tag, global_step, image=True)
        self.real.add_summary(summary, global_step, walltime)


class _Flaky:
    def __init__(self, *args, fail_image_steps=(), broken: bool = False, fail_tags=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._flaky_options = {"fail_image_steps": tuple(fail_image_steps), "broken": broken,
                               "fail_tags": tuple(fail_tags)}
        self._flaky = None

    @property
    def experiment(self):
        real = super().experiment
        if self._flaky is None or self._flaky.real is not real:
            self._flaky = FlakyWriter(real, **self._flaky_options)
        return self._flaky


class FlakyTensorBoardLogger(_Flaky, L.loggers.TensorBoardLogger):
    """``lightning.pytorch``'s TensorBoardLogger with a :class:`FlakyWriter`."""


class FlakyPLTensorBoardLogger(_Flaky, pl.loggers.TensorBoardLogger):
    """``pytorch_lightning``'s TensorBoardLogger with a :class:`FlakyWriter`."""
