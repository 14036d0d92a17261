"""The end-of-fit report: one self-contained HTML file (images inlined, charts as inline SVG) read from a run's logs."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from lightning_xai import keys as xai_keys
from lightning_xai.report.layout import custom_scalars_layout, describe, key_order
from lightning_xai.report.logs import RunData, find_runs, load_run
from lightning_xai.report.markup import Markup, document, element, markdown
from lightning_xai.report.svg import line_chart

__all__ = ["REPORT_FILE", "build_report", "load_newest", "report_path", "save_report", "write_report"]

#: The report's file name, in the run's log directory.
REPORT_FILE = "xai_report.html"
_NAMES = {"grad_cam": "Grad-CAM", "saliency": "saliency", "integrated_gradients": "Integrated Gradients"}
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
.alarm{border-left:4px solid #D55E00;background:#fff7f2;padding:4px 14px;margin:12px 0}
.alarm h3{margin:6px 0;color:#b34700} .quiet{color:#555} code{background:#f2f2f2;padding:0 3px}
"""


def _name(method: str) -> str:
    return _NAMES.get(method, method)


def _img(png: bytes, alt: str) -> Markup:
    return element("img", class_="pix", alt=alt, src=f"data:image/png;base64,{base64.b64encode(png).decode()}")


#: Keys every explained method logs (``xai/{method}/{key}``); the views' keys (``xai/projector/silhouette``) are not.
_METHOD_KEYS = (xai_keys.STABILITY, xai_keys.FLAGGED, xai_keys.OVERLAY, xai_keys.TIMELINE)


def _methods(data: RunData) -> list[str]:
    seen: list[str] = []
    for tag in [*data.scalars, *data.images]:
        parts = xai_keys.method_and_name(tag)
        if (parts and parts[1] in _METHOD_KEYS and parts[0] not in (xai_keys.AGREEMENT, "drift")
                and parts[0] not in seen):
            seen.append(parts[0])
    order = list(_NAMES)
    return sorted(seen, key=lambda m: (order.index(m) if m in order else len(order), m))


def _x(data: RunData, step: int) -> float:
    epoch = data.epoch_of(step)
    return float(step if epoch is None else epoch)


def _where(data: RunData, step: int) -> str:
    epoch = data.epoch_of(step)
    return f"epoch {epoch} (step {step})" if epoch is not None else f"step {step}"


def _epoch(data: RunData, step: int) -> str:
    epoch = data.epoch_of(step)
    return f"epoch {epoch}" if epoch is not None else f"step {step}"


def _at(series: list[tuple[int, float]], step: int) -> float | None:
    return next((v for s, v in series if s == step), None)


def _value_at_or_before(series: list[tuple[int, float]], step: int) -> float | None:
    best = None
    for s, v in series:
        if s <= step:
            best = v
    return best


def _alarm_steps(data: RunData) -> list[int]:
    """Steps of the epochs that raised a drift alarm (``xai/drift/alarm`` = 1): the epoch-level decision."""
    return sorted({s for s, v in data.scalars.get(xai_keys.DRIFT_ALARM, []) if v > 0.5})


def _flagged(data: RunData, methods: list[str]) -> dict[int, dict[str, int]]:
    """Per step, the probes flagged per method (``xai/{m}/drift`` > 0): evidence, not alarms."""
    steps: dict[int, dict[str, int]] = {}
    for m in methods:
        for step, value in data.scalars.get(xai_keys.flagged(m), []):
            if value > 0:
                steps.setdefault(step, {})[m] = int(value)
    return dict(sorted(steps.items()))


_BOLD_LINE = re.compile(r"^\*\*(?P<text>.+)\*\*$")
_EPOCH_LINE = re.compile(r"^epoch \d+, step \d+$")
_WHERE_LINE = re.compile(r"^Where it moved \((?P<inner>.*?)\): (?P<rest>.+)$")


def _alarm_text(text: str | None) -> tuple[str | None, list[str], list[str]]:
    """From the epoch's ``xai/drift`` text (untrusted): the detector's headline, the "where it moved" lines and the
    ids of the probes that moved most (the first column of its probe tables, in order). Missing parts are empty."""
    if not text:
        return None, [], []
    headline, where, probes = None, [], []
    in_probe_table = False
    for raw in text.splitlines():
        line = raw.strip()
        bold = _BOLD_LINE.match(line)
        if bold and headline is None and not _EPOCH_LINE.match(bold["text"].strip()):
            headline = bold["text"].strip()
        moved = _WHERE_LINE.match(line)
        if moved:  # "Where it moved (grad_cam, against epoch 5): grad_cam: 9/16 probes ..." -> the clause first
            against = moved["inner"].partition(", ")[2]
            where.append(moved["rest"].rstrip(".") + (f" ({against})." if against else "."))
        elif line.startswith("Per class:"):
            where.append(line)
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells and cells[0] == "probe":
                in_probe_table = True
            elif in_probe_table and cells and not set(cells[0]) <= set("-: ") and cells[0] not in probes:
                probes.append(cells[0])
        else:
            in_probe_table = False
    return headline, where, probes


def _mass_moves(data: RunData, methods: list[str], step: int) -> list[str]:
    """Where the evidence went, read from the localisation scalars: before the alarm, at it, at the end."""
    out = []
    for m in methods:
        series = data.scalars.get(xai_keys.relevance_mass(m), [])
        before = _value_at_or_before(series, step - 1)
        if before is None or not series:
            continue
        at, end = _value_at_or_before(series, step), series[-1][1]
        out.append(f"{_name(m)}: share of the map on the object {before:.2f} before the alarm, {at:.2f} at it, "
                   f"{end:.2f} at the end" + (" (the evidence moved off the object)" if end < before - 0.1 else ""))
    return out


def _alarm_summary(data: RunData, methods: list[str], step: int, text: str | None, last_step: int) -> Markup:
    """One alarm: when, the evidence, where it moved, what to do."""
    headline, where, probes = _alarm_text(text)
    score = _at(data.scalars.get(xai_keys.DRIFT_SCORE, []), step)
    per_method = [(m, _at(data.scalars.get(xai_keys.drift_evidence(m), []), step)) for m in methods]
    flagged = [(m, _at(data.scalars.get(xai_keys.flagged(m), []), step)) for m in methods]
    evidence: list[object] = []
    if score is not None:
        evidence.append(f"epoch evidence {score:.2f} (an alarm at >= 1)")
    strong = [f"{_name(m)} {v:.2f}" for m, v in sorted(per_method, key=lambda mv: -(mv[1] or 0)) if v is not None]
    if strong:
        evidence.append("per method " + ", ".join(strong))
    counts = [f"{_name(m)} {int(v)}" for m, v in flagged if v is not None]
    if counts:
        evidence.append("probes flagged " + ", ".join(counts))
    said = "; ".join(str(e) for e in evidence) + "." if evidence else "xai/drift/alarm = 1 (no evidence scalars)."
    items = [element("li", element("b", "Evidence: "), said,
                     [element("br"), "The detector: ", element("em", headline)] if headline else None)]
    moves = where + _mass_moves(data, methods, step)
    if moves:
        items.append(element("li", element("b", "Where it moved: "), element("br"),
                             [[line, element("br")] for line in moves[:-1]], moves[-1]))
    look = (f"look at probes {', '.join('#' + p for p in probes[:8])} (those that moved most; their tiles are "
            f"outlined in the overlays at {_epoch(data, step)} and in the timelines below)") if probes else (
        f"look at the overlays at {_epoch(data, step)} and the timelines below (flagged probes are outlined)")
    items.append(element("li", element("b", "What to do: "), look, ". If the change is intended (new data, an "
                         "augmentation, a planned fine-tune), accept it: ", element("code",
                         "monitor.drift_detector.accept()"), " makes the current maps the reference. If not, "
                         f"investigate what the model started to use around {_epoch(data, step)}: a cue in the "
                         "training data where the maps moved, a label or pipeline change."))
    active = data.scalars.get(xai_keys.DRIFT_ACTIVE, [])
    after = [(s, v) for s, v in active if s >= step]
    if after:
        back = next((s for s, v in after if v < 0.5), None)
        if back is None:
            items.append(element("li", f"Still different at the last explained epoch ({_epoch(data, last_step)}): "
                                 "xai/drift/active = 1, the model kept the new behaviour."))
        else:
            items.append(element("li", f"The explanations were back to the reference by {_epoch(data, back)} "
                                 "(xai/drift/active = 0)."))
    return element("div", element("h3", f"Alarm at {_where(data, step)}"), element("ul", items), class_="alarm")


def _input_weighted() -> frozenset[str]:
    # imported here: lightning_xai.metrics brings torchmetrics (seconds), which the report needs only for this name
    from lightning_xai.metrics.sanity import INPUT_WEIGHTED

    return frozenset(INPUT_WEIGHTED)


def _sanity_words(data: RunData, methods: list[str], threshold: float) -> list[Markup]:
    values = {m: data.scalars[xai_keys.sanity_similarity(m)][-1][1] for m in methods
              if data.scalars.get(xai_keys.sanity_similarity(m))}
    passing = [_name(m) for m, v in values.items() if v <= threshold]
    judge = (f"judge what the model learnt with {' and '.join(passing)}, which "
             f"{'pass' if len(passing) > 1 else 'passes'}" if passing else
             "no method passed here, so read every map with care")
    out = []
    for m, value in values.items():
        name = element("b", _name(m))
        if value <= threshold:
            out.append(element("li", name, ": similarity to a randomised model ",
                               element("span", f"{value:.2f}", class_="ok"),
                               f" (at most {threshold:.2f}): the maps depend on the trained weights, as they should."))
        elif m in _input_weighted():  # how the method works, not a failure of this run
            out.append(element("li", name, f": similarity to a randomised model {value:.2f} (above {threshold:.2f}), "
                               "as expected: the method multiplies the gradient by the input (x - baseline), so its "
                               "maps keep the image's structure whatever the weights (Adebayo et al. 2018 show the "
                               f"same for gradient x input). Read them for where the image's evidence lies; {judge}."))
        else:
            out.append(element("li", name, ": similarity to a randomised model ",
                               element("span", f"{value:.2f}", class_="warn"),
                               f" (above {threshold:.2f}): the maps change little when the weights are destroyed, so "
                               f"they say little about what this model learnt; {judge}."))
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


def _overlays_shown(overlays: list[tuple[int, bytes]], alarms: list[int]) -> list[tuple[int, bytes, str]]:
    """The overlays the report shows: the epoch before the first alarm, the alarm, and the last epoch."""
    shown: list[tuple[int, bytes, str]] = []
    if alarms:
        first = alarms[0]
        before = [o for o in overlays if o[0] < first]
        if before:
            shown.append((*before[-1], "before the alarm"))
        shown += [(*o, "the alarm") for o in overlays if o[0] == first]
    if overlays and overlays[-1][0] not in {s for s, _, _ in shown}:
        shown.append((*overlays[-1], "the last explained epoch"))
    return shown


def build_report(data: RunData, *, sanity_threshold: float = 0.5) -> str:
    """The report of one run as an HTML string (self-contained: images as data URIs, charts as inline SVG).

    Sections: a summary that leads with the drift alarms (``xai/drift/alarm`` = 1: when, the evidence, where the
    maps moved, what to do), then what was explained, the probes flagged without an alarm (evidence only), the
    sanity check; the curves (the dashboard's charts, alarm epochs marked); each method's timeline and overlays
    (before the first alarm, at it, the last); the ``xai/drift`` text of each alarm; every metric's first and last
    value with what it means.

    Everything read from the logs (tags, texts, class names) is untrusted: the page is built with
    :mod:`lightning_xai.report.markup` (escaped by construction) and carries a Content-Security-Policy that allows no
    script at all.

    Args:
        data: the run's logs (:func:`~lightning_xai.report.load_run`).
        sanity_threshold: the similarity above which the sanity check is read as failed (the monitor's default).
    """
    methods = _methods(data)
    xai = {tag: s for tag, s in data.scalars.items() if xai_keys.is_xai(tag)}
    steps = sorted({s for tag, series in xai.items() if tag.endswith("/stability") for s, _ in series})
    alarms = _alarm_steps(data)
    texts = dict(data.texts.get(xai_keys.DRIFT_TEXT, []))
    source = "TensorBoard event files" if data.source == "events" else "the PNG/CSV/Markdown files"
    body: list[Markup] = [element("h1", "lightning_xai report"), element(
        "div", f"{data.path} \u00b7 read from {source} \u00b7 {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        class_="meta")]
    body += _summary(data, methods, xai, steps, alarms, texts, sanity_threshold)
    body += _curves(data, xai, alarms)
    for m in methods:
        body += _pictures(data, m, alarms)
    # each alarm's text as logged
    items = [element("div", element("h3", f"Alarm at {_where(data, step)}"), markdown(texts[step]), class_="event")
             for step in alarms if step in texts]
    if items:
        body += [element("h2", "The alarms as logged (xai/drift text)"), *items]
    body += _metrics_table(xai, methods)
    return str(document("lightning_xai report", body, css=_CSS))


def _summary(data: RunData, methods: list[str], xai: dict, steps: list[int], alarms: list[int], texts: dict,
             sanity_threshold: float) -> list[Markup]:
    """The alarms first (when, the evidence, where the maps moved), then what was explained, the probes flagged
    without an alarm, the last stability and the sanity check."""
    body: list[Markup] = [element("h2", "Summary")]
    last_step = steps[-1] if steps else max((s for series in xai.values() for s, _ in series), default=0)
    if alarms:
        n = len(alarms)
        body.append(element("p", element("span", f"{n} drift alarm{'s' if n > 1 else ''}", class_="warn"),
                            f" in {len(steps)} explained epochs: " + ", ".join(_epoch(data, s) for s in alarms)
                            + ". An alarm is the epoch-level decision: the explanations of the probes, taken "
                            "together, moved more than this run's own noise allows."))
        body += [_alarm_summary(data, methods, s, texts.get(s), last_step) for s in alarms]
    elif xai_keys.DRIFT_ALARM in xai:
        body.append(element("p", element("span", "No drift alarm", class_="ok"),
                            f" in {len(steps)} explained epochs: after the warm-up the explanations never moved more "
                            "than this run's own noise allows."))
    summary: list[object] = []
    if steps:
        summary.append(f"Explained {len(steps)} times, from {_where(data, steps[0])} to {_where(data, steps[-1])}, "
                       f"with {', '.join(_name(m) for m in methods)}.")
    quiet = {s: c for s, c in _flagged(data, methods).items() if s not in alarms}
    if quiet:
        parts = [f"{_epoch(data, s)}: " + ", ".join(f"{_name(m)} {k}" for m, k in c.items()) for s, c in quiet.items()]
        summary.append(f"Probes flagged without an alarm (evidence, not drift) at {len(quiet)} epoch"
                       f"{'s' if len(quiet) > 1 else ''}: " + "; ".join(parts) + ". A flagged probe moved beyond "
                       "its own noise floor; single probes do that in normal training, so only the epoch's evidence "
                       "over all probes and methods raises an alarm.")
    finals = [f"{_name(m)} {xai[xai_keys.stability(m)][-1][1]:.2f}" for m in methods if xai_keys.stability(m) in xai]
    if finals:
        summary.append(f"Stability at the last explained epoch: {', '.join(finals)} (1 = the same map as the epoch "
                       "before).")
    body.append(element("ul", [element("li", s) for s in summary], class_="summary"))
    sanity = _sanity_words(data, methods, sanity_threshold)
    if sanity:
        body.append(element("h3", "Sanity check (model randomisation, at the end of fit)"))
        body.append(element("ul", sanity, class_="summary"))
    return body


def _curves(data: RunData, xai: dict, alarms: list[int]) -> list[Markup]:
    """The dashboard's charts, alarm epochs marked."""
    x_label = "epoch" if data.scalars.get("epoch") else "step"
    markers = [(_x(data, step), f"alarm, {_epoch(data, step)}") for step in alarms]
    charts = []
    for title, (_, patterns) in next(iter(custom_scalars_layout(xai).values()), {}).items():
        tags = [re.sub(r"\\(.)", r"\1", p[1:-1]) for p in patterns]
        tags = [t for t in tags if t in xai]
        names = _short_names(tags)
        series = {names[t]: [(_x(data, s), v) for s, v in xai[t]] for t in tags}
        bounded = any(w in title for w in ("stability", "overlap", "localisation: p", "localisation: r", "agreement"))
        charts.append(line_chart(series, title=title, x_label=x_label, y_range=(0.0, 1.0) if bounded else None,
                                 markers=markers, marker_labels=True))
    if not charts:
        return []
    note = (" Dashed lines: the alarm epochs." if alarms else "")
    return [element("h2", "Curves"), element("p", "The charts of the TensorBoard dashboard (Custom Scalars tab)."
                                             + note, class_="quiet"), element("div", charts, class_="charts")]


def _pictures(data: RunData, m: str, alarms: list[int]) -> list[Markup]:
    """One method's timeline and overlays (before the first alarm, at it, the last)."""
    pictures: list[Markup] = []
    timeline = data.latest("images", xai_keys.timeline(m))
    if timeline is not None:
        pictures.append(element("figure", _img(timeline[1], f"{m} timeline"), element(
            "figcaption", "Each probe (row) across the explained epochs (columns); flagged probes outlined.")))
    shown = _overlays_shown(data.images.get(xai_keys.overlay(m), []), alarms)
    panels = [element("figure", _img(png, f"{m} overlay"), element("figcaption", f"{_where(data, step)}: {what}"))
              for step, png, what in shown]
    if panels:
        pictures.append(element("div", panels, class_="panels"))
    return [element("h2", _name(m)), *pictures] if pictures else []


def _metrics_table(xai: dict, methods: list[str]) -> list[Markup]:
    """Every metric's first, last and largest value with what it means, in the dashboard's order."""
    rows = []
    for tag in sorted(xai, key=lambda t: key_order(t, methods)):
        values = [v for _, v in xai[tag]]
        rows.append(element("tr", element("td", element("code", tag)),
                            [element("td", f"{v:.3f}", class_="num") for v in (values[0], values[-1], max(values))],
                            element("td", describe(tag) or "-")))
    if not rows:
        return []
    return [element("h2", "All metrics"), element(
        "table", element("tr", [element("th", h) for h in ("key", "first", "last", "max", "meaning")]), rows)]


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
