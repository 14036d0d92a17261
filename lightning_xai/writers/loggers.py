"""Sinks on experiment loggers' own APIs: Weights & Biases, MLflow, and any logger's ``log_metrics``.

Loggers are recognised by what they can do, never by class (either Lightning package, or none): this module does not
import Lightning, wandb or MLflow until a sink of that kind writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_xai.writers.base import (
    check_image,
    check_step,
    check_tag,
    check_text,
    finite_scalars,
    finite_values,
    hwc,
    write_each,
)

__all__ = ["MetricsSink", "MlflowSink", "WandbSink", "is_mlflow_logger", "is_wandb_logger"]


def is_wandb_logger(logger: Any) -> bool:
    """A Weights & Biases logger: ``log_image(key, images, step, caption=...)``, ``log_text`` and ``log_table``."""
    return all(callable(getattr(logger, name, None)) for name in ("log_image", "log_text", "log_table", "log_metrics"))


def is_mlflow_logger(logger: Any) -> bool:
    """An MLflow logger: a ``run_id`` and an ``experiment`` client with ``log_image``/``log_text``/``log_dict``."""
    if not hasattr(type(logger), "run_id") or not callable(getattr(logger, "log_metrics", None)):
        return False
    client = getattr(logger, "experiment", None)
    return all(callable(getattr(client, name, None)) for name in ("log_image", "log_text", "log_dict"))


class MetricsSink:
    """Scalars through a logger's own ``log_metrics(dict, step)`` (as Lightning's ``LearningRateMonitor`` does);
    nothing else. The base of the W&B and MLflow sinks, and what a logger the monitor does not know gets.

    Args:
        logger: an object with ``log_metrics(metrics: dict[str, float], step: int)``.
    """

    supports_images = False
    supports_text = False
    supports_histograms = False
    supports_embedding = False
    supports_custom_scalars = False

    def __init__(self, logger: Any) -> None:
        if not callable(getattr(logger, "log_metrics", None)):
            raise TypeError(f"`logger` must have a log_metrics(metrics, step) method, got {type(logger).__name__}")
        self.logger = logger
        self.skipped_counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.logger).__name__})"

    @property
    def log_dir(self) -> str | None:
        value = getattr(self.logger, "log_dir", None)
        return value if isinstance(value, str) else None

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Every finite value through one ``log_metrics`` call; if the logger refuses that call, each key on its own, so
        one key it refuses (an :class:`~lightning_xai.writers.base.ItemsError` names it) never costs the others."""
        step = check_step(step)
        kept, skipped = finite_scalars(values)
        self.skipped_counts.update(skipped)
        if not kept:
            return skipped
        try:
            self.logger.log_metrics(kept, step)
        except Exception:
            if len(kept) == 1:
                raise
            write_each([(tag, lambda tag=tag, value=value: self.logger.log_metrics({tag: value}, step))
                        for tag, value in kept.items()], "scalars")
        return skipped

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        """Not stored (``supports_images`` is False)."""

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Not stored (``supports_text`` is False)."""

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Not stored (``supports_histograms`` is False)."""

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        """Not stored (``supports_embedding`` is False)."""

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None:
        """Not stored (``supports_custom_scalars`` is False)."""

    def flush(self) -> None:
        save = getattr(self.logger, "save", None)
        if callable(save):
            save()

    def close(self) -> None:
        """The logger belongs to the Trainer, which finalises it."""
        self.flush()


class WandbSink(MetricsSink):
    """Weights & Biases through the logger's API: images with ``log_image`` (caption included), text as a one-row
    table with ``log_text`` (columns ``step``, ``text``), histograms as ``wandb.Histogram``, scalars with
    ``log_metrics``. All are logged with Lightning's ``trainer/global_step`` as their step."""

    supports_images = True
    supports_text = True
    supports_histograms = True

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        kwargs = {} if caption is None else {"caption": [check_text(caption)]}
        self.logger.log_image(key=tag, images=[hwc(img)], step=step, **kwargs)

    def add_text(self, tag: str, text: str, step: int) -> None:
        check_tag(tag)
        step = check_step(step)
        self.logger.log_text(key=tag, columns=["step", "text"], data=[[step, check_text(text)]], step=step)

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        check_tag(tag)
        step = check_step(step)
        values = finite_values(values)
        if values.numel():
            import wandb  # present wherever a W&B logger is

            self.logger.log_metrics({tag: wandb.Histogram(values.numpy())}, step)


class MlflowSink(MetricsSink):
    """MLflow through the logger's client (``logger.experiment``) and ``logger.run_id``: images with
    ``log_image(key=tag, step=step)`` (MLflow's per-step images; shown in the run's Images tab), text as
    ``<tag>/step_<step>.md`` artifacts, histogram values as ``<tag>/step_<step>.json`` artifacts, scalars with
    ``log_metrics``. Captions are drawn into the overlay grids; MLflow images have no caption field."""

    supports_images = True
    supports_text = True
    supports_histograms = True

    @property
    def log_dir(self) -> str | None:
        return None

    def _client(self) -> tuple[Any, str]:
        return self.logger.experiment, self.logger.run_id

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        client, run_id = self._client()
        client.log_image(run_id, hwc(img), key=_mlflow_key(tag), step=step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        check_tag(tag)
        step = check_step(step)
        client, run_id = self._client()
        client.log_text(run_id, check_text(text), artifact_file=f"{_mlflow_key(tag)}/step_{step:07d}.md")

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        check_tag(tag)
        step = check_step(step)
        values = finite_values(values)
        if values.numel():
            client, run_id = self._client()
            client.log_dict(run_id, {"tag": tag, "step": step, "values": values.tolist()},
                            artifact_file=f"{_mlflow_key(tag)}/step_{step:07d}.json")


def _mlflow_key(tag: str) -> str:
    """MLflow keys allow letters, digits and ``_ - . / space``: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in tag)

