"""What one explanation round returns, read in one place.

A round's results are ``(N, ...)`` CPU tensors by name, in probe order (:class:`~._round.ProbeExplainer`): ``map/{m}``
heatmaps of the methods that ran, ``pred``, ``prob``, ``target``, ``ig_error`` and the measures' shard outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from lightning_xai.metrics.registry import MeasureContext

__all__ = ["MAP", "extras_of", "map_key", "maps_of", "measure_context", "methods_in"]

MAP = "map/"


def map_key(method: str) -> str:
    return MAP + method


def methods_in(results: Mapping[str, Tensor], methods: Sequence[str]) -> tuple[str, ...]:
    """The methods with maps in ``results`` (this round's), in the order of ``methods``."""
    return tuple(m for m in methods if map_key(m) in results)


def maps_of(results: Mapping[str, Tensor], methods: Sequence[str]) -> dict[str, Tensor]:
    """``{method: (N, 1, H, W)}`` for the ``methods`` that ran this round."""
    return {m: results[map_key(m)] for m in methods_in(results, methods)}


def extras_of(results: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Everything but the maps: the per-probe values the measures read as ``ctx.extras``."""
    return {k: v for k, v in results.items() if not k.startswith(MAP)}


def measure_context(results: Mapping[str, Tensor], methods: Sequence[str], *, masks: Tensor | None, size: int,
                    extras: Mapping[str, Tensor] | None = None) -> MeasureContext:
    """The measures' view of a round (``extras``: in place of the round's own, e.g. the sanity stage's)."""
    ran = methods_in(results, methods)
    return MeasureContext(methods=ran, maps={m: results[map_key(m)] for m in ran}, pred=results["pred"],
                          target=results["target"], masks=masks,
                          extras=extras if extras is not None else extras_of(results), size=size)
