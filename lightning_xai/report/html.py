"""The end-of-fit report: one self-contained HTML file (images inlined, charts as inline SVG) read from a run's logs."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from lightning_xai.report.layout import chart_of, custom_scalars_layout
from lightning_xai.report.logs import RunData, find_runs, load_run
from lightning_xai.report.markup import Markup, document, element, fragment, markdown
from lightning_xai.report.svg import line_chart

__all__ = ["REPORT_FILE", "build_report", "load_newest", "report_path", "save_report", "write_report"]

#: The report's file name, in the run's log directory.
REPORT_FILE = "xai_report.html"
_NAMES = {"grad_cam": "Grad-CAM", "saliency": "saliency", "integrated_gradients": "Integrated Gradients"}
_KEY = re.compile(r"^xai/(?P<method>[^/]+)/(?P<metric>[^/]+)$")
_METRIC_MEANING = {
    "stability": "rank correlation with the previous explained epoch's map (1 = unchanged)",
    "topk_overlap": "share of the top-10% pixels kept from the previous epoch",
    "drift": "probes flagged as drifting this epoch",
    "pointing_game": "share of maps whose peak falls inside the object's mask",
    "relevance_mass": "share of the map's mass inside the object's mask",
    "completeness_error": "median |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)| (0 = exact)",
    "completeness_error_p90": "90th percentile of the completeness error",
    "completeness_error_max": "largest completeness error",
    "deletion_auc": "target probability as the most relevant pixels are removed (low = faithful)",
    "insertion_auc": "target probability as the most relevant pixels are inserted (high = faithful)",
    "sanity_similarity": "similarity to the maps of a weight-randomised copy (low = the maps depend on the weights)",
}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px} .charts{display:flex;flex-wrap:wrap;gap:16px}
.summary li{margin:4px 0} .ok{color:#007a4d} .warn{color:#b34700;font-weight:600}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0 20px 0} figcaption{font-size:13px;color:#555;margin-top:4px}
img.pix{image-rendering:pixelated;max-width:100%} .event{border-left:3px solid #D55E00;padding:2px 12px;margin:12px 0}
.panels{display:flex;flex-wrap:wrap;gap:16px}
"""


def _name(method: str) -> str:
    return _NAMES.get(method, method)


def _img(png: bytes, alt: str) -> Markup:
    return element("img", class_="pix", alt=alt, src=f"data:image/png;base64,{base64.b64encode(png).decode()}")


def _methods(data: RunData) -> list[str]:
    seen: list[str] = []
    for tag in [*data.scalars, *data.images]:
        m = _KEY.match(tag)
        if m and m["method"] not in ("agreement", "drift") and m["method"] not in seen:
            seen.append(m["method"])
    order = list(_NAMES)
    return sorted(seen, key=lambda m: (order.index(m) if m in order else len(order), m))


def _x(data: RunData, step: int) -> float:
    epoch = data.epoch_of(step)
    return float(step if epoch is None else epoch)


def _where(data: RunData, step: int) -> str:
    epoch = data.epoch_of(step)
    return f"epoch {epoch} (step {step})" if epoch is not None else f"step {step}"


def _drift_events(data: RunData, methods: list[str]) -> list[tuple[int, dict[str, int]]]:
    steps: dict[int, dict[str, int]] = {}
    for m in methods:
        for step, value in data.scalars.get(f"xai/{m}/drift", []):
            if value > 0:
                steps.setdefault(step, {})[m] = int(value)
    for step, value in data.scalars.get("xai/drift/alarm", []):
        if value > 0:
            steps.setdefault(step, {})
    return sorted(steps.items())


def _value_at_or_before(series: list[tuple[int, float]], step: int) -> float | None:
    best = None
    for s, v in series:
        if s <= step:
            best = v
    return best


def _evidence_moves(data: RunData, methods: list[str], events: list[tuple[int, dict[str, int]]]) -> list[str]:
    """Where the evidence went, read from the localisation scalars: before the first drift vs the end of the run."""
    if not events:
        return []
    first = events[0][0]
    out = []
    for m in methods:
        series = data.scalars.get(f"xai/{m}/relevance_mass", [])
        before = _value_at_or_before(series, first - 1)
        if before is None or not series:
            continue
        at, end = _value_at_or_before(series, first), series[-1][1]
        out.append(f"{_name(m)}: share of the map on the object {before:.2f} before the first drift, "
                   f"{at:.2f} at it, {end:.2f} at the end" + (" (the evidence moved off the object)"
                                                                if end < before - 0.1 else ""))
    return out


def _input_weighted() -> frozenset[str]:
    # imported here: lightning_xai.metrics brings torchmetrics (seconds), which the report needs only for this name
    from lightning_xai.metrics.sanity import INPUT_WEIGHTED

    return frozenset(INPUT_WEIGHTED)


def _sanity_words(data: RunData, methods: list[str], threshold: float) -> list[Markup]:
    out = []
    for m in methods:
        series = data.scalars.get(f"xai/{m}/sanity_similarity")
        if not series:
            continue
        value = series[-1][1]
        name = element("b", _name(m))
        if value <= threshold:
            out.append(element("li", name, ": similarity to a randomised model ",
                               element("span", f"{value:.2f}", class_="ok"),
                               f" (at most {threshold:.2f}): the maps depend on the trained weights, as they should."))
        elif m in _input_weighted():  # how the method works, not a failure of this run
            out.append(element("li", name, f": similarity to a randomised model {value:.2f} (above {threshold:.2f}), "
                               "as expected: the method multiplies the gradient by the input (x - baseline), so its "
                               "maps keep the image's structure whatever the weights (Adebayo et al. 2018 show the "
                               "same for gradient x input). Read them for where the image's evidence lies; judge what "
                               "the model learnt with the methods that pass."))
        else:
            out.append(element("li", name, ": similarity to a randomised model ",
                               element("span", f"{value:.2f}", class_="warn"),
                               f" (above {threshold:.2f}): the maps change little when the weights are destroyed, so "
                               "they say little about what this model learnt; prefer a method that passes."))
    return out


def _short_names(tags: list[str]) -> dict[str, str]:
    """Legend names: the parts of the tags that differ (``xai/grad_cam/stability`` -> ``grad_cam`` in a chart of
    stabilities), the whole tag after ``xai/`` where nothing is shared."""
    parts = [t.split("/")[1:] for t in tags]
    if len(parts) < 2:
        return {t: "/".join(p) for t, p in zip(tags, parts)}
    common = [i for i in range(min(len(p) for p in parts)) if len({p[i] for p in parts}) == 1]
    names = {t: "/".join(x for i, x in enumerate(p) if i not in common) or "/".join(p) for t, p in zip(tags, parts)}
    return names if len(set(names.values())) == len(names) else {t: "/".join(p) for t, p in zip(tags, parts)}


def build_report(data: RunData, *, sanity_threshold: float = 0.5) -> str:
    """The report of one run as an HTML string (self-contained: images as data URIs, charts as inline SVG).

    Sections: a summary in plain words (what was explained, when drift was flagged and where the evidence moved,
    the sanity check), the curves (the same charts as the TensorBoard dashboard), each method's timeline and last
    overlays, the drift events as logged, and a table of the quality metrics (first and last value).

    Everything read from the logs (tags, texts, class names) is untrusted: the page is built with
    :mod:`lightning_xai.report.markup` (escaped by construction) and carries a Content-Security-Policy that allows no
    script at all.

    Args:
        data: the run's logs (:func:`~lightning_xai.report.load_run`).
        sanity_threshold: the similarity above which the sanity check is read as failed (the monitor's default).
    """
    methods = _methods(data)
    xai = {tag: s for tag, s in data.scalars.items() if tag.startswith("xai/")}
    steps = sorted({s for tag, series in xai.items() if tag.endswith("/stability") for s, _ in series})
    events = _drift_events(data, methods)
    x_label = "epoch" if data.scalars.get("epoch") else "step"
    source = "TensorBoard event files" if data.source == "events" else "the PNG/CSV/Markdown files"
    body: list[Markup] = [element("h1", "lightning_xai report"), element(
        "div", f"{data.path} \u00b7 read from {source} \u00b7 {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        class_="meta")]

    # ---------------------------------------------------------------- summary in plain words
    summary: list[object] = []
    if steps:
        summary.append(f"Explained {len(steps)} times, from {_where(data, steps[0])} to {_where(data, steps[-1])}, "
                       f"with {', '.join(_name(m) for m in methods)}.")
    if events:
        parts = []
        for step, counts in events:
            flagged = ", ".join(f"{_name(m)} {n}" for m, n in counts.items()) or "alarm raised"
            parts.append(f"{_where(data, step)}: {flagged}")
        summary.append(fragment(element("span", "Drift flagged", class_="warn"),
                                " (probes flagged per method) at " + "; ".join(parts) + "."))
        summary.extend(_evidence_moves(data, methods, events))
    elif steps:
        summary.append(fragment(element("span", "No drift flagged", class_="ok"),
                                ": after the warm-up, no probe's map changed more than its own history allows."))
    finals = [f"{_name(m)} {xai[f'xai/{m}/stability'][-1][1]:.2f}" for m in methods if f"xai/{m}/stability" in xai]
    if finals:
        summary.append(f"Stability at the last explained epoch: {', '.join(finals)} (1 = the same map as the epoch "
                       "before).")
    sanity = _sanity_words(data, methods, sanity_threshold)
    body.append(element("h2", "Summary"))
    body.append(element("ul", [element("li", s) for s in summary], class_="summary"))
    if sanity:
        body.append(element("h3", "Sanity check (model randomisation)"))
        body.append(element("ul", sanity, class_="summary"))

    # ---------------------------------------------------------------- curves: the dashboard's charts
    markers = [(_x(data, step), f"drift at {_where(data, step)}") for step, _ in events]
    layout = custom_scalars_layout(xai)
    charts = []
    for title, (_, patterns) in next(iter(layout.values()), {}).items():
        tags = [re.sub(r"\\(.)", r"\1", p[1:-1]) for p in patterns]
        tags = [t for t in tags if t in xai]
        names = _short_names(tags)
        series = {names[t]: [(_x(data, s), v) for s, v in xai[t]] for t in tags}
        y_range = (0.0, 1.0) if any(w in title for w in ("stability", "overlap", "localisation", "sanity")) else None
        charts.append(line_chart(series, title=title, x_label=x_label, y_range=y_range, markers=markers))
    if charts:
        body += [element("h2", "Curves"), element("div", charts, class_="charts")]

    # ---------------------------------------------------------------- pictures
    for m in methods:
        pictures: list[Markup] = []
        timeline = data.latest("images", f"xai/{m}/timeline")
        if timeline is not None:
            pictures.append(element("figure", _img(timeline[1], f"{m} timeline"), element(
                "figcaption", "Each probe (row) across the explained epochs (columns); flagged probes outlined.")))
        overlays = data.images.get(f"xai/{m}/overlay", [])
        shown = []
        if events:
            shown += [o for o in overlays if o[0] == events[0][0]]
        if overlays and overlays[-1] not in shown:
            shown.append(overlays[-1])
        panels = [element("figure", _img(png, f"{m} overlay"), element("figcaption", _where(data, step)))
                  for step, png in shown]
        if panels:
            pictures.append(element("div", panels, class_="panels"))
        if pictures:
            body += [element("h2", _name(m)), *pictures]

    # ---------------------------------------------------------------- drift events as logged
    if events:
        texts = dict(data.texts.get("xai/drift", []))
        items = [element("div", element("h3", _where(data, step)), markdown(texts[step]), class_="event")
                 for step, _ in events if step in texts]
        if items:
            body += [element("h2", "Drift events"), *items]

    # ---------------------------------------------------------------- quality metrics
    rows = []
    for tag in sorted(xai, key=lambda t: (chart_of(t), t)):
        series = xai[tag]
        match = _KEY.match(tag)
        meaning = _METRIC_MEANING.get(match["metric"], "") if match else ""
        if tag.startswith("xai/agreement/"):
            meaning = "rank correlation between the two methods' maps"
        first, last = series[0][1], series[-1][1]
        rows.append(element("tr", element("td", tag), element("td", f"{first:.3f}", class_="num"),
                            element("td", f"{last:.3f}", class_="num"), element("td", meaning)))
    if rows:
        body += [element("h2", "All metrics"), element(
            "table", element("tr", [element("th", h) for h in ("key", "first", "last", "meaning")]), rows)]
    return str(document("lightning_xai report", body, css=_CSS))


def load_newest(logdir: str | os.PathLike[str]) -> RunData:
    """The newest run under ``logdir`` (itself or a sub-directory) that has lightning_xai logs.

    Raises:
        FileNotFoundError: ``logdir`` does not exist, or holds no lightning_xai logs.
        NotADirectoryError: ``logdir`` is a file.
    """
    for run in find_runs(logdir):  # newest first; a directory without xai/ data (another logger's) is skipped
        try:
            return load_run(run)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"no lightning_xai logs (event files with xai/ scalars, or xai_scalars.csv) under "
                            f"{str(logdir)!r}")


def write_report(logdir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
                 sanity_threshold: float = 0.5) -> Path:
    """Read a run's logs under ``logdir`` and write the report; returns its path.

    ``logdir`` is a run directory or a parent of several (the newest run is used). The report goes to ``output``
    (a file, or an existing directory: ``<output>/xai_report.html``), default ``<run directory>/xai_report.html``.
    """
    return save_report(load_newest(logdir), output, sanity_threshold=sanity_threshold)


def report_path(data: RunData, output: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`save_report` writes: ``output``; ``<output>/xai_report.html`` if ``output`` is an existing
    directory; ``<data.path>/xai_report.html`` without one.

    Raises:
        FileNotFoundError: the directory that would hold the report does not exist (it is not created: a typo in a
            path should not make a new directory tree).
        NotADirectoryError: that "directory" is a file.
    """
    path = Path(output) if output is not None else data.path / REPORT_FILE
    if path.is_dir():
        path = path / REPORT_FILE
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(f"cannot write the report to {str(path)!r}: the directory {str(parent)!r} does not "
                                "exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write the report to {str(path)!r}: {str(parent)!r} is a file, not a "
                                 "directory")
    return path


def save_report(data: RunData, output: str | os.PathLike[str] | None = None, *, sanity_threshold: float = 0.5) -> Path:
    """Write the report of ``data`` (see :func:`report_path` for where); returns the path.

    The write is atomic: the page goes to a hidden temporary file next to the target, which then replaces it, so a
    reader never sees half a report; if anything fails, the temporary file is removed and the target is untouched.

    Raises:
        OSError: the report could not be written (the message names the path and the cause).
    """
    path = report_path(data, output)
    html = build_report(data, sanity_threshold=sanity_threshold).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the user's umask applies
        with os.fdopen(fd, "wb") as f:
            f.write(html)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        failure = type(err)(f"cannot write the report to {str(path)!r}: {err.strerror or err}")
        failure.errno = err.errno
        raise failure from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
