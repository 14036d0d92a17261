"""The report is safe to attach to a ticket: nothing read from a run becomes markup, and writes are atomic and clean.

Hostile input comes from where a user's data really enters: class names given to a real Trainer run, and a crafted
TensorBoard event file (tags and texts). The produced page is parsed with ``html.parser`` and audited.
"""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from test_report_alarms import check_alarm_story
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.report import REPORT_FILE, build_report, load_run, save_report, write_report
from lightning_xai.report.__main__ import REBUILT_FILE
from lightning_xai.report.__main__ import main as cli_main
from lightning_xai.report.markup import CSP, Markup, document, element, markdown, stylesheet

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "javascript:alert(1)"]
HOSTILE_TAG = "<img src=x onerror=alert(1)>"


class Audit(HTMLParser):
    """Everything a browser would treat as markup: elements, attributes, and the text shown."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str | None]] = []
        self.text: list[str] = []
        self.head: list[tuple[str, dict]] = []
        self._in_head = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag == "head":
            self._in_head = True
        elif self._in_head:
            self.head.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "head":
            self._in_head = False

    def handle_data(self, data):
        self.text.append(data)


def assert_inert(html: str) -> Audit:
    """No script element, no event-handler attribute, no javascript: URL; the CSP meta tag first in <head>."""
    audit = Audit(html)
    assert "script" not in audit.tags
    for tag in ("iframe", "object", "embed", "a", "form", "base", "link"):
        assert tag not in audit.tags
    handlers = [(t, n) for t, n, _ in audit.attributes if n.lower().startswith("on")]
    assert handlers == []
    urls = [(t, n, v) for t, n, v in audit.attributes if n.lower() in ("href", "src", "xlink:href", "action")]
    assert all(not (v or "").strip().lower().startswith("javascript:") for _, _, v in urls)
    assert all(t == "img" and n == "src" and (v or "").startswith("data:image/png;base64,") for t, n, v in urls)
    first_tag, first_attrs = audit.head[0]
    assert first_tag == "meta" and first_attrs.get("http-equiv") == "Content-Security-Policy"
    assert first_attrs["content"] == CSP and "default-src 'none'" in CSP and "script-src" not in CSP
    return audit


# ---------------------------------------------------------------------------------------------- the builder itself
def test_builder_escapes_text_and_attributes_by_default():
    cell = element("td", HOSTILE[0], title=HOSTILE[1])
    assert cell == '<td title="&lt;img src=x onerror=alert(1)&gt;">&lt;script&gt;alert(1)&lt;/script&gt;</td>'
    assert element("p", "a", element("b", "<b>")) == "<p>a<b>&lt;b&gt;</b></p>"
    assert element("p", "x" + element("b", "y")) == "<p>x&lt;b&gt;y&lt;/b&gt;</p>"  # str + Markup is text again
    with pytest.raises(ValueError, match="script"):
        element("script", "alert(1)")
    with pytest.raises(ValueError, match="event handlers"):
        element("img", onerror="alert(1)")
    with pytest.raises(ValueError, match="inline PNG"):
        element("img", src="javascript:alert(1)")
    with pytest.raises(ValueError, match="inline PNG"):
        element("img", src="data:text/html;base64,PHNjcmlwdD4=")
    with pytest.raises(ValueError, match="not allowed"):
        element("div", href="#")
    with pytest.raises(ValueError, match="'<'"):
        stylesheet("</style><script>alert(1)</script>")
    assert_inert(document(HOSTILE[0], element("p", HOSTILE[1])))


def test_markdown_renders_our_constructs_and_escapes_everything_else():
    text = ("**epoch 3, step 40** <script>alert(1)</script>\n\n| method | flagged |\n|---|---|\n"
            "| <img src=x onerror=alert(1)> | 3 |\n\nEvidence:\n- lag `z` +7.3\n- [x](javascript:alert(1))\n\n"
            '<a href="javascript:alert(1)">click</a>')
    html = markdown(text)
    assert isinstance(html, Markup)
    audit = assert_inert(document("t", html))
    assert {"b", "table", "th", "td", "ul", "li", "code"} <= set(audit.tags)
    shown = "".join(audit.text)
    assert "<script>alert(1)</script>" in shown and "<img src=x onerror=alert(1)>" in shown  # visible, as text
    assert '<a href="javascript:alert(1)">click</a>' in shown and "[x](javascript:alert(1))" in shown


# ---------------------------------------------------------------------------------------------- crafted event file
def crafted_run(path: Path) -> None:
    """A TensorBoard run written by hand, as an attacker (or a careless dataset) could: hostile tags and texts."""
    writer = SummaryWriter(str(path))
    for epoch in range(4):
        step = 10 * (epoch + 1)
        writer.add_scalar("epoch", float(epoch), step)
        writer.add_scalar(f"xai/{HOSTILE_TAG}/stability", 0.9 - 0.3 * (epoch == 2), step)
        writer.add_scalar(f"xai/{HOSTILE_TAG}/drift", float(epoch == 2), step)
        writer.add_scalar("xai/grad_cam/stability", 0.8, step)
        writer.add_scalar("xai/drift/alarm", float(epoch == 2), step)
        writer.add_scalar("xai/<script>alert(1)</script>", 1.0, step)
        writer.add_image(f"xai/{HOSTILE_TAG}/overlay", torch.rand(3, 8, 8), step)
        writer.add_text("xai/drift", f"**epoch {epoch}, step {step}** <script>alert(1)</script>\n\n"
                                     f"| method | flagged |\n|---|---|\n| {HOSTILE_TAG} | 1 |\n\n"
                                     '<a href="javascript:alert(1)">details</a> <svg onload=alert(1)>', step)
    writer.add_image(f"xai/{HOSTILE_TAG}/timeline", torch.rand(3, 8, 8), 40)
    writer.close()


def test_report_from_crafted_event_file_has_no_live_markup(tmp_path):
    crafted_run(tmp_path / "run")
    data = load_run(tmp_path / "run")
    assert f"xai/{HOSTILE_TAG}/stability" in data.scalars and "xai/drift" in data.texts
    html = build_report(data)
    audit = assert_inert(html)
    shown = "".join(audit.text)
    assert HOSTILE_TAG in shown and "<script>alert(1)</script>" in shown  # the data is shown, as text
    assert "img" in audit.tags  # our own inline PNGs are still there
    # the CLI writes the same page
    assert cli_main([str(tmp_path / "run"), "-o", str(tmp_path / "cli.html")]) == 0
    assert_inert((tmp_path / "cli.html").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- a real Trainer run
class _Reinitialise:
    """Re-initialise the model's layers at one epoch: a sudden change the detector alarms on, so the drift text
    names the classes (per class: where the maps moved)."""

    def __new__(cls, epoch: int):
        import pytorch_lightning as pl

        class Reinitialise(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    with torch.random.fork_rng():
                        torch.manual_seed(0)
                        for module in pl_module.modules():
                            if module is not pl_module and hasattr(module, "reset_parameters"):
                                module.reset_parameters()

        return Reinitialise()


def test_report_from_hostile_class_names_in_a_real_run(tmp_path):
    import pytorch_lightning as pl
    from lit_models import TinyCNN, TinyDataModule, trainer_kwargs

    from lightning_xai import ExplanationMonitor

    pl.seed_everything(7, workers=True)
    monitor = ExplanationMonitor(num_probes=6, methods=("grad_cam", "saliency"), metrics=(),
                                 display={"class_names": HOSTILE}, drift={"warmup_epochs": 2, "threshold": 3.0})
    # a lower alarm threshold than the default: this test needs an alarm (to get class names into the drift text),
    # not a measure of the default's sensitivity
    trainer = pl.Trainer(callbacks=[monitor, _Reinitialise(4)], **trainer_kwargs(tmp_path, max_epochs=6))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    alarms = [r["epoch"] for r in monitor.history if r["alarm"]]
    flagged_only = [r["epoch"] for r in monitor.history
                    if not r["alarm"] and any(any(f) for f in r["flags"].values())]
    assert alarms, "the re-initialisation should raise an alarm"
    html = (Path(trainer.logger.log_dir) / REPORT_FILE).read_text(encoding="utf-8")
    audit = assert_inert(html)
    shown = "".join(audit.text)
    assert any(name in shown for name in HOSTILE)  # the class names reached the page (drift text), as text
    # the same real run tells the alarm story: only the alarm epochs are drift (issue 23)
    check_alarm_story(html, alarms, flagged_only)


# ---------------------------------------------------------------------------------------------- atomic, clean writes
def small_run(path: Path) -> Path:
    writer = SummaryWriter(str(path))
    for step in (1, 2):
        writer.add_scalar("xai/grad_cam/stability", 0.9, step)
    writer.close()
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_failed_write_leaves_no_temporary_file(tmp_path):
    """The final rename fails after the temporary file was written: it is removed, the target untouched."""
    run = small_run(tmp_path / "run")
    target = tmp_path / "target.html"
    target.mkdir()
    (target / REPORT_FILE).mkdir()  # -o target.html -> target.html/xai_report.html, itself a non-empty directory
    (target / REPORT_FILE / "x").write_text("x")
    with pytest.raises(OSError, match="cannot write the report"):
        save_report(load_run(run), target)
    assert leftovers(target) == [] and leftovers(tmp_path) == []
    assert (target / REPORT_FILE / "x").read_text() == "x"


def test_output_into_an_existing_directory(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main([str(run), "-o", str(out)]) == 0
    assert (out / REPORT_FILE).is_file() and leftovers(out) == [] and leftovers(tmp_path) == []
    assert f"Report: {out / REPORT_FILE}" in capsys.readouterr().out
    assert cli_main([str(run), "-o", str(out)]) == 0
    assert "(replaced the existing file)" in capsys.readouterr().out


def test_cli_keeps_the_monitors_own_report(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    (run / REPORT_FILE).write_text("the monitor's report")
    assert cli_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert (run / REPORT_FILE).read_text() == "the monitor's report"
    assert (run / REBUILT_FILE).is_file()
    assert f"The run's own report is kept: {run / REPORT_FILE}" in out and f"Report: {run / REBUILT_FILE}" in out


@pytest.mark.parametrize("case", ["missing parent", "parent is a file", "read-only directory"])
def test_bad_output_paths_give_one_line_and_exit_2(tmp_path, case):
    run = small_run(tmp_path / "run")
    if case == "missing parent":
        output = tmp_path / "no" / "such" / "dir" / "r.html"
    elif case == "parent is a file":
        (tmp_path / "file").write_text("x")
        output = tmp_path / "file" / "r.html"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            (locked / "probe").touch()
        except PermissionError:
            pass
        else:  # root (or a filesystem ignoring modes) can write anyway: nothing to test here
            (locked / "probe").unlink()
            pytest.skip("this user can write into a read-only directory")
        output = locked / "r.html"
    result = subprocess.run([sys.executable, "-m", "lightning_xai.report", str(run), "-o", str(output)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot write the report" in errors[0] and str(output) in errors[0]
    assert not output.exists() and leftovers(output.parent if output.parent.is_dir() else tmp_path) == []
    with pytest.raises(OSError, match="cannot write the report"):
        write_report(run, output)
