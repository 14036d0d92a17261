"""The recipes in ``recipes/``: each runs end to end in a subprocess in its fast mode; the YAML config parses.

What a newcomer runs must work: exit code 0, TensorBoard events with every method's overlay and stability, the
printed summary. The argument-handling paths run in-process (cheap); the training runs in subprocesses, as a user
would start them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tb_events import read_events

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
METHODS = ("grad_cam", "saliency", "integrated_gradients")


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc


def _load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_explained(log_dir: Path, epochs: int) -> dict:
    events = read_events(log_dir)
    assert events["files"], f"no TensorBoard event file under {log_dir}"
    for method in METHODS:
        overlays = events["images"].get(f"xai/{method}/overlay", [])
        assert len(overlays) == epochs, (method, [s for s, *_ in overlays])
        _, width, height, pixels = overlays[-1]
        assert pixels.shape == (height, width, 3) and width >= 96 and height >= 96
        assert pixels.std() > 5, "overlay grid is (nearly) uniform"
        stability = events["scalars"].get(f"xai/{method}/stability", [])
        assert len(stability) == epochs and all(-1.0 <= v <= 1.0 for _, v in stability), stability
    assert len(events["texts"].get("xai/drift", [])) == epochs
    return events


# ---------------------------------------------------------------------- demo
def test_demo_fast(tmp_path):
    out = tmp_path / "demo"
    proc = _run("recipes/demo.py", "--fast", "--out", str(out))
    lines = proc.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "phase", "val_acc"]), None)
    assert header is not None, proc.stdout
    rows = [line.split() for line in lines[header + 2: header + 5]]
    assert [row[:2] for row in rows] == [["0", "clean"], ["1", "clean"], ["2", "shortcut"]], proc.stdout
    assert "tensorboard --logdir" in proc.stdout and "--samples_per_plugin images=" in proc.stdout
    assert f"TensorBoard logs: {out / 'fast' / 'version_0'}" in proc.stdout  # a new version directory per run
    events = _assert_explained(out / "fast" / "version_0", epochs=3)
    assert "val_acc" in events["scalars"]
    # the views: images per epoch, dissection of the marker, the projector's files, the end-of-fit graphs
    assert "What the network learned" in proc.stdout
    for tag in ("xai/activations/top_channels", "xai/max_min/grid", "xai/activation_max/classes"):
        assert len(events["images"][tag]) == 3, tag
    assert len(events["scalars"]["xai/dissection/units/marker"]) == 3
    assert len(events["images"]["xai/attention_graphs/probes"]) == 1
    assert (out / "fast" / "version_0" / "projector_config.pbtxt").is_file()
    # the console: the report's path last; the monitor's lines without a source-file prefix; no third-party noise
    report = out / "fast" / "version_0" / "xai_report.html"
    assert lines[-1] == f"Report: {report}" and report.is_file()
    assert "flagged: probes whose map moved beyond their own noise floor" in proc.stdout
    console = proc.stdout + proc.stderr
    assert "explaining 4 probes with grad_cam, saliency, integrated_gradients on the untrained model" in console
    assert "Tip:" not in console and "LeafSpec" not in console, console[-3000:]
    prefixed = [line for line in console.splitlines() if "ExplanationMonitor" in line
                and re.search(r"\.py:\d+:", line.split("ExplanationMonitor")[0])]
    assert prefixed == []


# ---------------------------------------------------------------------- folder
def test_folder_fast(tmp_path):
    folder = _load_recipe("folder")
    data = tmp_path / "shapes"
    assert folder.main(["--make-demo-folder", str(data), "--fast"]) == 0
    classes = sorted(p.name for p in data.iterdir())
    assert classes == ["circle", "cross", "square", "triangle"]
    assert sum(len(list((data / c).glob("*.png"))) for c in classes) == 64

    out = tmp_path / "runs"
    proc = _run("recipes/folder.py", "--data", str(data), "--model", "resnet18", "--fast", "--out", str(out))
    assert "4 classes: circle, cross, square, triangle" in proc.stdout
    assert "stab grad_cam" in proc.stdout and "TensorBoard logs:" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("epoch"))
    assert "flagged gc/sal/ig" in header and header.endswith("| alarm") and "drifted" not in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("Report: ")
    _assert_explained(out, epochs=2)


def test_folder_split_is_deterministic_and_per_class(tmp_path):
    from lightning_xai.datasets import ShapesDataset, export_image_folder

    folder = _load_recipe("folder")
    export_image_folder(ShapesDataset(40, image_size=16), tmp_path)
    train_a, val_a, classes = folder.load_folder(str(tmp_path), 16, 0.25, seed=0)
    train_b, val_b, _ = folder.load_folder(str(tmp_path), 16, 0.25, seed=0)
    _, val_c, _ = folder.load_folder(str(tmp_path), 16, 0.25, seed=1)
    assert val_a.indices == val_b.indices and train_a.indices == train_b.indices
    assert val_a.indices != val_c.indices
    assert not set(train_a.indices) & set(val_a.indices) and len(train_a) + len(val_a) == 40
    targets = val_a.dataset.targets
    # 10 images per class, 25 % held out per class: round(2.5) = 2 of each class in validation.
    assert sorted(targets[i] for i in val_a.indices) == sorted(list(range(len(classes))) * 2)
    image, label = val_a[0]
    assert image.shape == (3, 16, 16) and 0 <= label < 4


def test_folder_errors(tmp_path, capsys):
    folder = _load_recipe("folder")
    assert folder.main(["--data", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert folder.main(["--data", str(tmp_path / "empty")]) == 2
    assert "not a usable ImageFolder" in capsys.readouterr().err

    from lightning_xai.datasets import ShapesDataset, export_image_folder

    data = export_image_folder(ShapesDataset(8, image_size=16), tmp_path / "shapes")
    assert folder.main(["--data", str(data), "--model", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert "'resnet19' is not a torchvision classification model" in err and "resnet18" in err

    with pytest.raises(SystemExit):
        folder.main([])
    assert "--make-demo-folder" in capsys.readouterr().err

    assert folder.main(["--make-demo-folder", str(data)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_folder_weights(tmp_path, capsys):
    import torchvision

    folder = _load_recipe("folder")
    # A 1000-class checkpoint: the backbone is loaded, the head re-initialised for the folder's classes.
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = folder.build_model("resnet18", 4, str(tmp_path / "r18.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (4, 512)
    assert "head is re-initialised" in capsys.readouterr().out

    # Another architecture: refused, naming what does not fit.
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(folder.RecipeError, match="does not fit torchvision 'resnet18': unexpected: layer1.2"):
        folder.build_model("resnet18", 4, str(tmp_path / "r34.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(folder.RecipeError, match="could not be read as a state dict"):
        folder.build_model("resnet18", 4, str(tmp_path / "junk.pth"))
    with pytest.raises(folder.RecipeError, match="no such file"):
        folder.build_model("resnet18", 4, str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------------- LightningCLI
def test_cli_yaml_parses_into_monitor(tmp_path):
    pytest.importorskip("jsonargparse")
    from lightning_xai.callbacks import ExplanationMonitor

    cli_recipe = _load_recipe("cli")
    config = yaml.safe_load((RECIPES / "cli.yaml").read_text())
    entry = next(cb for cb in config["trainer"]["callbacks"] if cb["class_path"] == "lightning_xai.ExplanationMonitor")
    cli = cli_recipe.main(["--config", str(RECIPES / "cli.yaml"), "--trainer.logger.init_args.save_dir",
                           str(tmp_path), "--trainer.callbacks.target=2",
                           # a nested option overridden with a dotted path keeps the rest of its group
                           "--trainer.callbacks.drift.window=6"], run=False)
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, ExplanationMonitor)]
    assert len(monitors) == 1
    monitor = monitors[0]
    init = entry["init_args"]
    assert monitor.num_probes == init["num_probes"] == 16
    assert monitor.methods == tuple(init["methods"])
    assert monitor.every_n_epochs == init["every_n_epochs"]
    ig = monitor.method_options["integrated_gradients"]
    assert ig["n_steps"] == init["method_options"]["integrated_gradients"]["n_steps"] == 16
    assert ig["tolerance"] == 0.02 and ig["max_steps"] == 128
    assert monitor.max_overhead == init["max_overhead"] == "auto"
    display = monitor.display
    assert display["mean"] == tuple(init["display"]["mean"]) and display["std"] == tuple(init["display"]["std"])
    assert display["colormap"] == init["display"]["colormap"] and display["alpha"] == init["display"]["alpha"]
    drift = monitor.drift
    assert drift["warmup_epochs"] == init["drift"]["warmup_epochs"] == 2
    assert drift["window"] == 6 and init["drift"]["window"] == 4
    own = ("pool_size", "pool_from")  # the monitor's own drift options (the detection pool), not the detector's
    expected = {k: v for k, v in {**init["drift"], "window": 6}.items() if k not in own}
    assert monitor.config.detector_options == expected  # what reaches the drift detector
    # A class index given on the command line arrives as an int, not the string "2".
    assert monitor.target == 2 and isinstance(monitor.target, int)
    assert cli.trainer.max_epochs == config["trainer"]["max_epochs"]


def test_cli_rejects_bad_monitor_argument(tmp_path, capsys):
    pytest.importorskip("jsonargparse")
    cli_recipe = _load_recipe("cli")
    with pytest.raises(SystemExit):
        cli_recipe.main(["--config", str(RECIPES / "cli.yaml"), "--trainer.logger.init_args.save_dir",
                         str(tmp_path), "--trainer.callbacks.display.colormap=rainbow"], run=False)
    assert "rainbow" in capsys.readouterr().err


def test_cli_fit_fast(tmp_path):
    pytest.importorskip("jsonargparse")
    proc = _run(
        "recipes/cli.py", "fit", "--config", "recipes/cli.yaml",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.train_size", "64", "--data.val_size", "32", "--data.image_size", "32", "--data.batch_size", "16",
        "--trainer.callbacks.method_options.integrated_gradients.n_steps", "4", "--trainer.callbacks.num_probes", "4",
        "--trainer.callbacks.max_overhead", "null",  # every method every epoch (the default budget spaces IG)
    )
    assert "probes flagged | alarm" in proc.stdout and "tensorboard --logdir" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("Report: ")
    _assert_explained(tmp_path, epochs=2)
    saved = list(tmp_path.rglob("config.yaml"))
    assert len(saved) == 1
    callbacks = yaml.safe_load(saved[0].read_text())["trainer"]["callbacks"]
    assert callbacks[0]["class_path"] == "lightning_xai.ExplanationMonitor"
    init = callbacks[0]["init_args"]
    assert init["num_probes"] == 4 and init["method_options"]["integrated_gradients"]["n_steps"] == 4


def test_folder_help_shows_defaults_and_demo_folder_progress(tmp_path, capsys):
    folder = _load_recipe("folder")
    with pytest.raises(SystemExit):
        folder.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: 224)" in text and "(default: resnet18)" in text and "(default: 5)" in text
    assert folder.main(["--make-demo-folder", str(tmp_path / "d"), "--fast"]) == 0
    out = capsys.readouterr().out
    assert "Writing 64 shape images (32x32)" in out and "images written: 64/64" in out
