"""The stability/drift tracker: pooled maps in, stability scalars, drift report and history records out.

No Lightning import: testable with plain tensors. :class:`DriftTracker` keeps the history records and hands the pooled
maps to :class:`lightning_xai.drift.DriftDetector`, which owns the references, the per-probe stability and the alarm.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_xai.drift import DriftDetector, DriftReport
from lightning_xai.metrics.stability import downsample

_STATE_VERSION = 4


def pool(maps: Tensor, size: int) -> Tensor:
    """Heatmaps ``(N, 1, H, W)`` -> pooled ``(N, 1, size, size)``: what stability compares and the checkpoint keeps."""
    return downsample(maps, size=size).reshape(maps.shape[0], 1, size, size)


@dataclass
class DetectionRows:
    """The detection pool's rows beyond the display probes, for one round: the cheap methods' heatmaps
    ``(n, 1, H, W)`` (NaN where the pool could not be explained: degenerate, left out), predictions, explained
    classes, origin (0 validation, 1 training) and masks (or None)."""

    heatmaps: dict[str, Tensor]
    pred: Tensor
    target: Tensor
    origin: Tensor
    masks: Tensor | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.heatmaps)

    def maps(self, method: str, size: int) -> Tensor:
        return pool(self.heatmaps[method], size)


# ------------------------------------------------------------------------------------------------- the history
_KINDS = ("float", "int", "bool", "dict", "object")
_GROW = 64  # first capacity of a column's buffers (rows and values); doubled when full


def _kind(value: Any) -> str:
    """How a record's value is stored: numbers and lists of one kind of number in tensors; a (possibly empty) dict as
    the presence of its key (its entries are columns of their own); anything else as the object itself."""
    if isinstance(value, Mapping):
        return "dict"
    items = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) for v in items):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return "int"
    if all(isinstance(v, float) for v in items):
        return "float"
    return "object"


class _Column:
    """One field of the history records (e.g. ``stability`` of ``grad_cam``): every row's values in one flat tensor
    that grows by doubling, and per row where they start and how many there are (``-1``: the row lacks the field).
    Floats are held as float32 while every value is exactly a float32 (the maps and similarities are), else float64;
    integers as int32 while they fit, else int64: reading a row back gives the values that were stored."""

    def __init__(self, kind: str, scalar: bool) -> None:
        self.kind, self.scalar = kind, scalar
        self.rows = 0
        self.bounds = torch.full((_GROW, 2), -1, dtype=torch.int32)  # (start, length) per row
        self.used = 0
        dtype = {"float": torch.float32, "int": torch.int32, "bool": torch.bool}.get(kind)
        self.values = None if dtype is None else torch.empty(_GROW, dtype=dtype)
        self.objects: dict[int, Any] = {}  # kind "object": row -> value (rare: strings, None, mixed lists)

    def nbytes(self) -> int:
        held = self.bounds.numel() * self.bounds.element_size()
        return held + (0 if self.values is None else self.values.numel() * self.values.element_size())

    def _reserve_row(self, row: int) -> None:
        if row >= self.bounds.shape[0]:
            grown = torch.full((max(2 * self.bounds.shape[0], row + 1), 2), -1, dtype=torch.int32)
            grown[: self.bounds.shape[0]] = self.bounds
            self.bounds = grown
        self.rows = row + 1

    def _widen(self, values: Tensor) -> Tensor:
        """The values in this column's dtype, widening the column (losslessly) when they need more."""
        assert self.values is not None
        if self.kind == "float" and self.values.dtype == torch.float32:
            narrow = values.to(torch.float32)
            if not bool(((narrow.double() == values) | (narrow.isnan() & values.isnan())).all()):
                self.values = self.values.double()
        elif self.kind == "int" and self.values.dtype == torch.int32 and values.numel() and (
                int(values.min()) < -2**31 or int(values.max()) >= 2**31):
            self.values = self.values.long()
        return values.to(self.values.dtype)

    def put(self, row: int, value: Any) -> None:
        self._reserve_row(row)
        if self.kind in ("dict", "object"):  # a dict's entries are columns of their own
            if self.kind == "object":
                self.objects[row] = value
            self.bounds[row, 0], self.bounds[row, 1] = 0, 0
            return
        assert self.values is not None
        items = [value] if self.scalar else value
        wide = {"float": torch.float64, "int": torch.int64, "bool": torch.bool}[self.kind]
        values = self._widen(torch.tensor(items, dtype=wide))
        n = values.numel()
        if self.used + n > self.values.numel():
            grown = torch.empty(max(2 * self.values.numel(), self.used + n), dtype=self.values.dtype)
            grown[: self.used] = self.values[: self.used]
            self.values = grown
        self.values[self.used : self.used + n] = values
        self.bounds[row, 0], self.bounds[row, 1] = self.used, n
        self.used += n

    def has(self, row: int) -> bool:
        return row < self.rows and int(self.bounds[row, 1]) >= 0

    def get(self, row: int) -> Any:
        if self.kind == "dict":
            return {}
        if self.kind == "object":
            return self.objects[row]
        assert self.values is not None
        start, n = (int(v) for v in self.bounds[row])
        items = self.values[start : start + n].tolist()
        return items[0] if self.scalar else items

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "scalar": self.scalar, "rows": self.rows,
                "bounds": self.bounds[: self.rows].clone(),
                "values": None if self.values is None else self.values[: self.used].clone(),
                "objects": [[row, value] for row, value in self.objects.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Column:
        column = cls(str(state["kind"]), bool(state["scalar"]))
        column.rows = int(state["rows"])
        column.bounds = state["bounds"].to(torch.int32).clone()
        if column.bounds.shape[0] == 0:
            column.bounds = torch.full((_GROW, 2), -1, dtype=torch.int32)
        if state["values"] is not None:
            column.values = state["values"].clone()
            column.used = column.values.numel()
        column.objects = {int(row): value for row, value in state["objects"]}
        return column


class History(Sequence):
    """The monitor's per-epoch history records, stored compactly.

    Reads like the list of plain records it replaces (``history[-1]["stability"]["grad_cam"]`` is a list of floats,
    ``len``, iteration, slicing, ``==`` with a list), but holds them column by column in tensors (float32 where the
    values are exact float32, int32, bool; see :class:`_Column`): about 4 bytes per stored number against 32 for a
    Python float in a list, so a long run keeps a few hundred bytes per epoch (16 probes, 3 methods) instead of
    several KiB. A record is rebuilt on each access (keep it if you read it often).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]] = ()) -> None:
        self._columns: dict[tuple[str, ...], _Column] = {}
        self._rows = 0
        for record in records:
            self.append(record)

    # ---------------------------------------------------------------- writing
    def append(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (a dict of numbers, lists of numbers and nested dicts of those; other values are kept as
        they are)."""
        row = self._rows
        self._put(row, (), record)
        self._rows += 1

    def _put(self, row: int, prefix: tuple[str, ...], record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            path = (*prefix, str(key))
            if isinstance(value, Tensor):
                value = value.tolist()
            scalar = not isinstance(value, (list, Mapping))
            column = self._columns.get(path)
            if column is None:
                kind = "float" if isinstance(value, list) and not value else _kind(value)
                column = self._columns[path] = _Column(kind, scalar)
            elif column.kind != "object" and (column.scalar != scalar or (
                    _kind(value) != column.kind and not (isinstance(value, list) and not value))):
                column = self._retype(path, column)  # a field that changes kind: kept as objects from now on
            column.put(row, value)
            if isinstance(value, Mapping):
                self._put(row, path, value)

    def _retype(self, path: tuple[str, ...], column: _Column) -> _Column:
        """A column whose values change kind keeps every row as a Python object from now on (never seen in the
        monitor's own records; a custom measure's per-probe values could)."""
        if column.kind == "object":
            return column
        objects = _Column("object", scalar=False)
        for row in range(column.rows):
            if column.has(row):
                objects.put(row, column.get(row))
        objects._reserve_row(max(column.rows - 1, 0))
        self._columns[path] = objects
        return objects

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(self._rows))]
        i = index + self._rows if index < 0 else index
        if not 0 <= i < self._rows:
            raise IndexError(f"history index {index} out of range ({self._rows} records)")
        return self._record(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._record(i) for i in range(self._rows))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (History, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"History({self._rows} records, {self.nbytes()} bytes)"

    def _record(self, row: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for path, column in self._columns.items():
            if not column.has(row):
                continue
            parent = record
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = column.get(row)
        return record

    def fields(self, key: str) -> set[str]:
        """The entries any record held under ``key`` (e.g. ``fields("stability")``: every method that was ever
        compared), without rebuilding the records."""
        return {path[1] for path, column in self._columns.items()
                if len(path) == 2 and path[0] == key and bool((column.bounds[: column.rows, 1] >= 0).any())}

    def nbytes(self) -> int:
        """Bytes held in the columns' tensors (objects kept as they are not counted)."""
        return sum(column.nbytes() for column in self._columns.values())

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Tensors, lists, strings and numbers only (``torch.load(weights_only=True)`` reads it)."""
        return {"rows": self._rows, "columns": [[list(path), column.state()] for path, column in self._columns.items()]}

    @classmethod
    def from_state(cls, state: Any) -> History:
        """From :meth:`state_dict`, or from the plain list of records that older checkpoints hold."""
        if isinstance(state, Mapping) and "columns" in state:
            history = cls()
            history._rows = int(state["rows"])
            history._columns = {tuple(path): _Column.from_state(column) for path, column in state["columns"]}
            return history
        return cls(list(state))


def lr_event(previous: Sequence[float] | None, current: Sequence[float], factor: float = 2.0) -> str | None:
    """A learning-rate step between two explained epochs (any param group changed by ``factor`` or more), described
    for the drift report; None otherwise. Schedule steps change how fast the maps move, which is not drift."""
    if not previous or len(previous) != len(current):
        return None
    ratios = [c / p for p, c in zip(previous, current) if p > 0 and c > 0]
    big = [r for r in ratios if r >= factor or r <= 1.0 / factor]
    if not big:
        return None
    r = max(big, key=lambda v: max(v, 1.0 / v))
    return f"learning rate x{r:.3g} since the previous explained epoch"


def new_drift(detector_options: Mapping[str, Any], size: int, topk: float) -> DriftDetector:
    """The drift detector the monitor uses (pooled maps of side ``size`` in, :class:`DriftReport` out)."""
    return DriftDetector(**{**dict(detector_options), "size": int(size), "topk": float(topk)})


class DriftTracker:
    """History and drift state of one monitor: pooled maps in, scalars, report and one history record out.

    Args:
        methods: the explained methods.
        size: side of the pooled maps.
        detector_options: keyword arguments of the drift detector.
        topk: share of pixels in the top-k overlap.
    """

    def __init__(self, methods: Sequence[str], size: int, detector_options: Mapping[str, Any], topk: float) -> None:
        self.methods = tuple(methods)
        self.size = int(size)
        self._detector_options = dict(detector_options)
        self._topk = float(topk)
        self.reset()

    def reset(self) -> None:
        """A fresh history: the next update takes the reference."""
        self.drift = new_drift(self._detector_options, self.size, self._topk)
        self.history = History()
        self.has_reference = False

    def keys(self) -> set[str]:
        return self.drift.keys(self.methods)

    def pooled(self, results: Mapping[str, Tensor], extra: DetectionRows | None = None) -> dict[str, Tensor]:
        """Each method's pooled maps: the display probes, then (cheap methods) the detection pool's other rows. Only
        the methods that ran this round (under a budget the optional ones skip rounds)."""
        out = {m: pool(results[f"map/{m}"], self.size) for m in self.methods if f"map/{m}" in results}
        if extra is not None:
            for m in extra.methods:
                if m in out:
                    out[m] = torch.cat([out[m], extra.maps(m, self.size)])
        return out

    def take_reference(self, epoch: int, results: Mapping[str, Tensor], extra: DetectionRows | None = None) -> None:
        """The fit-start round: what the model looks at before this fit trains it (compared with, never judged)."""
        pred = results["pred"] if extra is None else torch.cat([results["pred"], extra.pred])
        self.drift.prime(self.pooled(results, extra), pred=pred)
        self.has_reference = True

    def update(self, epoch: int, step: int, results: Mapping[str, Tensor], *, masks: Tensor | None = None,
               labels: Tensor | None = None, probe_ids: Sequence[Any] | None = None,
               class_names: Sequence[str] | None = None, event: str | None = None,
               extra: DetectionRows | None = None) -> tuple[dict[str, float], DriftReport, dict[str, Any]]:
        """Compare this round with the references; returns scalars, the report and the history record to keep."""
        if labels is not None and labels.ndim != 1:
            labels = None  # multi-label probes: no single class per probe for the per-class story
        pred, origin, num_display = results["pred"], None, None
        if extra is not None:
            num_display = int(results["pred"].shape[0])
            pred = torch.cat([pred, extra.pred])
            origin = torch.cat([torch.zeros(num_display, dtype=torch.long), extra.origin])
            labels = None if labels is None else torch.cat([labels, extra.target])
            masks = None if masks is None or extra.masks is None else torch.cat(
                [masks.float(), extra.masks.float().to(masks.device)])
        report = self.drift.update(epoch, self.pooled(results, extra), pred=pred, labels=labels, masks=masks,
                                   origin=origin, num_display=num_display, probe_ids=probe_ids,
                                   class_names=class_names, event=event)
        self.has_reference = True
        record: dict[str, Any] = {"epoch": epoch, "step": step, "alarm": report.alarm}
        for key, values in (("stability", report.stability), ("topk_overlap", report.topk_overlap),
                            ("flags", report.flags)):
            record[key] = {m: values[m].tolist() for m in self.methods if m in values}
        return dict(report.scalars), report, record

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "history": self.history.state_dict(), "drift": self.drift.state_dict(),
                "has_reference": self.has_reference}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = History.from_state(state["history"])
        drift = state["drift"]
        self.drift = new_drift(self._detector_options, self.size, self._topk)
        if "method_states" in drift:
            self.drift.load_state_dict(drift)
        elif drift.get("reference"):  # lightning_xai 0.1: the previous maps survive, the noise floor is relearnt
            self.drift.prime(drift["reference"], pred=drift.get("reference_pred"))
        self.has_reference = bool(state["has_reference"])
