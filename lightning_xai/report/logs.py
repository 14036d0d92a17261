"""Read what a run logged back: TensorBoard event files, or the PNG/CSV/Markdown files of the file writer."""

from __future__ import annotations

import csv
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightning_xai import keys as xai_keys

__all__ = ["RunData", "find_runs", "load_run"]

_EVENTS = "events.out.tfevents."
_SCALARS_FILE, _TEXT_FILE, _IMAGES_DIR = "xai_scalars.csv", "xai_text.md", "xai_images"
_METRICS_FILE = "metrics.csv"  # Lightning's CSVLogger: one column per key, one row per logging call
_EPOCH_STEP = re.compile(r"epoch (?P<epoch>\d+), step (?P<step>\d+)")
_TEXT_SECTION = re.compile(r"^## (?P<tag>.+) \(step (?P<step>\d+)\)\n\n", re.MULTILINE)


@dataclass
class RunData:
    """What one run logged, by tag, each a list of ``(step, value)`` sorted by step.

    Attributes:
        path: the run directory.
        source: ``"events"`` (TensorBoard event files) or ``"files"`` (the file writer's PNG/CSV/Markdown).
        scalars: ``{tag: [(step, float)]}`` (every scalar tag, ``xai/`` and the user's, e.g. ``epoch``).
        images: ``{tag: [(step, png bytes)]}`` (``xai/`` tags only).
        texts: ``{tag: [(step, markdown)]}`` (``xai/`` tags only).
        layout: the custom-scalars layout written to the run (as a dict), if any.
    """

    path: Path
    source: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    layout: dict | None = None

    def epoch_of(self, step: int) -> int | None:
        """The epoch explained at ``step``: from the monitor's own ``xai/drift`` text (``**epoch E, step S**``), else
        Lightning's ``epoch`` scalar (the smallest value logged at that step: at an epoch's last step the next
        epoch's first training metrics may share it), else ``None``."""
        for s, text in self.texts.get(xai_keys.DRIFT_TEXT, []):
            if s == step:
                match = _EPOCH_STEP.search(text)
                if match and int(match["step"]) == step:
                    return int(match["epoch"])
        at = [int(v) for s, v in self.scalars.get("epoch", []) if s == step]
        if at:
            return min(at)
        before = [int(v) for s, v in self.scalars.get("epoch", []) if s < step]
        return before[-1] if before else None

    def latest(self, kind: str, tag: str):
        """The last ``(step, value)`` of ``tag`` in ``scalars``/``images``/``texts`` (``kind``), or ``None``."""
        series = getattr(self, kind).get(tag)
        return series[-1] if series else None


def _has_run(path: Path) -> bool:
    return path.is_dir() and (any(p.name.startswith(_EVENTS) for p in path.iterdir())
                              or (path / _SCALARS_FILE).is_file() or _csv_logger_has_xai(path))


def _csv_logger_has_xai(path: Path) -> bool:
    metrics = path / _METRICS_FILE
    if not metrics.is_file():
        return False
    with metrics.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return any(xai_keys.is_xai(column) for column in header)


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``logdir`` (itself included) holding event files or the file writer's ``xai_scalars.csv``,
    newest (by modification time of their files) first."""
    root = Path(logdir)
    if not root.exists():
        raise FileNotFoundError(f"`logdir` does not exist: {str(root)!r}")
    if not root.is_dir():
        raise NotADirectoryError(f"`logdir` must be a directory, got a file: {str(root)!r}")
    runs = [p for p in [root, *sorted(q for q in root.rglob("*") if q.is_dir())] if _has_run(p)]

    def newest(p: Path) -> float:
        return max((f.stat().st_mtime for f in p.iterdir() if f.is_file()), default=0.0)

    return sorted(runs, key=newest, reverse=True)


def _event_records(path: Path) -> Iterator[bytes]:
    """The serialized events of every event file in ``path``, in TensorBoard's order (file names sorted), without
    the per-record CRC32C check: without TensorFlow, TensorBoard computes it in pure Python (about 0.2 us per byte),
    which was most of the time to read a run back (every overlay PNG). A truncated last record ends its file, as in
    TensorBoard's reader. Record: length (uint64), its masked CRC (uint32), the data, the data's masked CRC (uint32)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and "tfevents" in p.name and not p.name.endswith(
        ".profile-empty"))
    for file in files:
        data = file.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            end = offset + 12 + length + 4
            if end > len(data):
                break
            yield data[offset + 12 : end - 4]
            offset = end


def _from_events(path: Path) -> RunData:
    from google.protobuf.message import DecodeError
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto import event_pb2

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    # What acc.Reload() does (each event through the accumulator, so purging and tag handling are TensorBoard's),
    # with the records read as above.
    for record in _event_records(path):
        try:
            event = event_pb2.Event.FromString(record)
        except DecodeError:  # a damaged record: skip it (TensorBoard would stop at its CRC)
            continue
        acc._ProcessEvent(event)
    tags = acc.Tags()
    data = RunData(path=path, source="events")
    for tag in tags.get("scalars", []):
        data.scalars[tag] = [(e.step, float(e.value)) for e in acc.Scalars(tag)]
    for tag in tags.get("images", []):
        if xai_keys.is_xai(tag):
            data.images[tag] = [(e.step, e.encoded_image_string) for e in acc.Images(tag)]
    for tag in tags.get("tensors", []):
        if tag == "custom_scalars__config__":
            data.layout = _layout_from_tensor(acc.Tensors(tag)[-1].tensor_proto)
        elif xai_keys.is_xai(tag):
            events = acc.Tensors(tag)
            if events and events[0].tensor_proto.string_val:  # text summaries
                name = tag[: -len("/text_summary")] if tag.endswith("/text_summary") else tag
                data.texts[name] = [(e.step, e.tensor_proto.string_val[0].decode("utf-8")) for e in events]
    for series in (*data.scalars.values(), *data.images.values(), *data.texts.values()):
        series.sort(key=lambda item: item[0])
    return data


def _layout_from_tensor(proto) -> dict:
    from google.protobuf import json_format
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(proto.string_val[0])
    return json_format.MessageToDict(layout)


def _from_files(path: Path) -> RunData:
    data = RunData(path=path, source="files")
    if (path / _SCALARS_FILE).is_file():  # the file sink's long format: step, tag, value
        with (path / _SCALARS_FILE).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                data.scalars.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    else:  # Lightning's CSVLogger, when the scalars went to it: wide format, empty cells where a key was not logged
        with (path / _METRICS_FILE).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                for tag, value in row.items():
                    if tag not in ("step", None) and value not in ("", None) and step not in ("", None):
                        data.scalars.setdefault(tag, []).append((int(float(step)), float(value)))
    images = path / _IMAGES_DIR
    if images.is_dir():
        for tag_dir in sorted(p for p in images.iterdir() if p.is_dir()):
            tag = _tag_from_dirname(tag_dir.name)
            data.images[tag] = [(int(p.stem.split("_")[-1]), p.read_bytes()) for p in sorted(tag_dir.glob("step_*.png"))]
    text_file = path / _TEXT_FILE
    if text_file.is_file():
        text = text_file.read_text(encoding="utf-8")
        sections = list(_TEXT_SECTION.finditer(text))
        for i, match in enumerate(sections):
            end = sections[i + 1].start() if i + 1 < len(sections) else len(text)
            data.texts.setdefault(match["tag"], []).append((int(match["step"]), text[match.end() : end].strip()))
    for series in (*data.scalars.values(), *data.images.values(), *data.texts.values()):
        series.sort(key=lambda item: item[0])
    return data


def _tag_from_dirname(name: str) -> str:
    """``xai_grad_cam_overlay`` -> ``xai/grad_cam/overlay``: the file writer flattens ``/`` into ``_``; image tags
    are ``xai/{method}/{kind}`` and a method name keeps its own underscores."""
    if not name.startswith("xai_"):
        return name
    head, _, last = name[4:].rpartition("_")
    return xai_keys.of(head, last) if head else xai_keys.PREFIX + last


def load_run(path: str | os.PathLike[str]) -> RunData:
    """Load one run directory: its TensorBoard event files if it has any ``xai/`` data there, else the files (scalars
    from the file sink's ``xai_scalars.csv`` or a CSVLogger's ``metrics.csv``; images and text from the file sink).

    Raises:
        FileNotFoundError: if ``path`` holds neither (use :func:`find_runs` on a parent directory).
    """
    path = Path(path)
    if any(p.name.startswith(_EVENTS) for p in path.iterdir()):
        data = _from_events(path)
        if any(xai_keys.is_xai(tag) for tag in data.scalars):
            return data
    if (path / _SCALARS_FILE).is_file() or _csv_logger_has_xai(path):
        return _from_files(path)
    raise FileNotFoundError(
        f"no lightning_xai logs in {str(path)!r}: expected TensorBoard event files with xai/ scalars, "
        f"{_SCALARS_FILE} from the file writer, or a CSVLogger's {_METRICS_FILE} with xai/ columns"
    )
