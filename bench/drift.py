"""Drift-alarm scenario suite on the embedded shapes data: false alarms on clean runs, delays on planted changes.

Each run trains the demo-sized CNN (32 px, a few hundred training images per epoch, plain torch loop, one CPU
thread) and explains 16 fixed probes at every epoch end with Grad-CAM, saliency and Integrated Gradients (16 steps),
exactly the maps the monitor would pool. The pooled maps (and predictions, labels, shape masks, marker masks) of
every epoch are cached under ``--cache``; the detector is then *replayed* on the cached series, so tuning or
re-checking the rule takes seconds, not a re-training.

    python bench/drift.py                      # record missing runs (tens of minutes on 2 cores), then replay
    python bench/drift.py --replay-only        # the table from the cache
    python bench/drift.py --scenarios clean marker --seeds 2

Scenarios (change at epoch ``--change`` = 10, 20 epochs, 4 warm-up epochs):

- ``clean``: nothing changes (false alarms counted on every post-warm-up epoch).
- ``lr_up`` / ``lr_down``: the learning rate steps up 10x (from a tenth of the usual rate) or down 10x at the change
  (not drift: false alarms).
- ``marker``: every training image gets its class marker in the class corner (probes carry it).
- ``edge``: a class-coloured patch at one fixed place (top edge), probes carry it.
- ``random``: the class-coloured patch at a random free place on every image (no fixed position).
- ``train_only``: the corner marker in the training images only; the probes are clean validation images.
- ``gradual``: the marker's share of training images ramps 0.1, 0.2, ... per epoch from ``--change - 2``.
- ``noise`` / ``blur`` / ``brightness``: a domain shift of the training images at the change.
- ``reinit``: the model is re-initialised (weights and optimiser) at the change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_xai.attribution import explain  # noqa: E402
from lightning_xai.datasets import ShapesDataset  # noqa: E402
from lightning_xai.drift import DriftDetector  # noqa: E402
from lightning_xai.metrics.stability import downsample  # noqa: E402

METHODS = ("grad_cam", "saliency", "integrated_gradients")
SCENARIOS = ("clean", "lr_up", "lr_down", "marker", "edge", "random", "train_only", "gradual", "noise", "blur",
             "brightness", "reinit")
NOT_DRIFT = ("clean", "lr_up", "lr_down")
SEEDS = {"clean": 5, "lr_up": 3, "lr_down": 3}  # others: --seeds
SIZE = 16  # pooled grid, the monitor's default similarity_size


class ShapesCNN(nn.Module):
    """The demo's CNN without Lightning: three conv blocks with BatchNorm, global pooling, linear."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 4 * w, False))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                        nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _materialise(ds: ShapesDataset, cache: dict, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if key not in cache:
        items = [ds.sample(i) for i in range(len(ds))]
        cache[key] = (torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items]))
    return cache[key]


def _probe_set(scenario: str, seed: int, num_probes: int, image_size: int) -> dict[str, torch.Tensor]:
    placement = {"edge": "edge", "random": "random"}.get(scenario, "corner")
    marker = "none" if scenario == "train_only" else "class"
    ds = ShapesDataset(num_probes, image_size=image_size, seed=1000 + seed, shortcut_strength=1.0, marker=marker,
                       placement=placement)
    items = [ds.sample(i) for i in range(num_probes)]
    return {"images": torch.stack([it["image"] for it in items]), "labels": torch.tensor([it["label"] for it in items]),
            "masks": torch.stack([it["mask"] for it in items]),
            "marker_masks": torch.stack([it["marker_mask"] for it in items])}


def record_run(scenario: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one scenario run and return its per-epoch pooled maps and facts (plain tensors and lists)."""
    torch.manual_seed(seed)
    placement = {"edge": "edge", "random": "random"}.get(scenario, "corner")
    train = ShapesDataset(args.train_size, image_size=args.image_size, seed=10 * seed + 1, placement=placement)
    val = ShapesDataset(256, image_size=args.image_size, seed=10 * seed + 2, marker="none")
    probes = _probe_set(scenario, seed, args.num_probes, args.image_size)
    model = ShapesCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    cache: dict = {}
    xv, yv = _materialise(val, {}, ("val",))
    epochs: list[dict] = []
    change = args.change
    for epoch in range(args.epochs):
        strength = 0.0
        if scenario in ("marker", "edge", "random", "train_only") and epoch >= change:
            strength = 1.0
        if scenario == "gradual":
            strength = min(1.0, max(0.0, 0.1 * (epoch - (change - 3))))
        train.set_shortcut(strength)
        if scenario in ("noise", "blur", "brightness") and epoch >= change:
            train.set_corruption(scenario, 1.0)
        if epoch == 0 and scenario == "lr_up":  # a warm-up schedule: 10x lower, then up to the usual rate
            for group in opt.param_groups:
                group["lr"] = 0.1 * args.lr
        if epoch == change and scenario in ("lr_up", "lr_down"):
            for group in opt.param_groups:
                group["lr"] = args.lr if scenario == "lr_up" else 0.1 * args.lr
        if epoch == change and scenario == "reinit":
            model = ShapesCNN()
            opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        x, y = _materialise(train, cache, (strength, train.corruption))
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_acc = float((model(xv).argmax(1) == yv).float().mean())
            logits = model(probes["images"])
        maps = explain(model, probes["images"], probes["labels"], METHODS, n_steps=16)
        pooled = {m: downsample(v, SIZE).reshape(-1, 1, SIZE, SIZE) for m, v in maps.items()}
        epochs.append({"epoch": epoch, "maps": pooled, "pred": logits.argmax(1), "val_acc": val_acc,
                       "strength": strength})
    return {"scenario": scenario, "seed": seed, "change": change, "epochs": epochs, "labels": probes["labels"],
            "masks": probes["masks"], "marker_masks": probes["marker_masks"],
            "marker_strength": [e["strength"] for e in epochs]}


def replay(run: dict, **detector_kwargs) -> list:
    """The detector's reports for one cached run, epoch by epoch."""
    det = DriftDetector(**detector_kwargs)
    reports = []
    for e in run["epochs"]:
        # what the monitor does: a learning-rate step between explained epochs is reported as a non-drift event
        event = "learning rate x10" if run["scenario"] in ("lr_up", "lr_down") and e["epoch"] == run["change"] else None
        reports.append(det.update(e["epoch"], e["maps"], pred=e["pred"], labels=run["labels"], masks=run["masks"],
                                  event=event))
    return reports


def _expected(run: dict, warmup: int) -> tuple[int | None, int | None]:
    """(change epoch, deadline epoch) for a drift scenario; (None, None) for not-drift scenarios."""
    scenario, change = run["scenario"], run["change"]
    if scenario in NOT_DRIFT:
        return None, None
    if scenario == "gradual":
        first = next(i for i, s in enumerate(run["marker_strength"]) if s > 0)
        half = next(i for i, s in enumerate(run["marker_strength"]) if s >= 0.5)
        return first, half - 1  # before it is on half the training images
    if scenario in ("train_only", "random"):
        return change, change + 2  # within 2 explained epochs
    return change, change  # sudden: at the change epoch


def evaluate(runs: list[dict], warmup: int, **detector_kwargs) -> tuple[list[dict], dict]:
    rows = []
    for run in runs:
        reports = replay(run, warmup_epochs=warmup, **detector_kwargs)
        alarms = [r.epoch for r in reports if r.alarm]
        change, deadline = _expected(run, warmup)
        if change is None:
            false = [e for e in alarms if e >= warmup]
            first = None
        else:
            false = [e for e in alarms if warmup <= e < change]
            first = next((e for e in alarms if e >= change), None)
        rows.append({"scenario": run["scenario"], "seed": run["seed"], "change": change, "deadline": deadline,
                     "first_alarm": first, "false": false, "alarms": alarms,
                     "checked": sum(1 for r in reports if r.epoch >= warmup and (change is None or r.epoch < change)),
                     "ok": first is not None and first <= deadline if change is not None else not false})
    clean_epochs = sum(r["checked"] for r in rows if r["scenario"] in NOT_DRIFT)
    false_epochs = sum(len(r["false"]) for r in rows)
    drift_rows = [r for r in rows if r["change"] is not None]
    summary = {"false_alarm_epochs": false_epochs,
               "checked_epochs": sum(r["checked"] for r in rows), "clean_epochs": clean_epochs,
               "clean_false": sum(len(r["false"]) for r in rows if r["scenario"] in NOT_DRIFT),
               "detected_in_time": sum(bool(r["ok"]) for r in drift_rows), "drift_runs": len(drift_rows),
               "missed": sum(r["first_alarm"] is None for r in drift_rows)}
    return rows, summary


def print_table(rows: list[dict], summary: dict) -> None:
    print(f"{'scenario':<11} {'runs':>4} {'change':>6} {'target':>6} | {'first alarm per seed':<24} | "
          f"{'false-alarm epochs':<20} | in time")
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == scenario]
        change = rs[0]["change"]
        first = " ".join("-" if r["first_alarm"] is None else str(r["first_alarm"]) for r in rs)
        false = " ".join(",".join(map(str, r["false"])) or "." for r in rs)
        ok = sum(bool(r["ok"]) for r in rs)
        print(f"{scenario:<11} {len(rs):>4} {'-' if change is None else change:>6} "
              f"{'-' if change is None else rs[0]['deadline']:>6} | {first:<24} | {false:<20} | {ok}/{len(rs)}")
    print(f"summary: {summary['clean_false']} false-alarm epoch(s) in {summary['clean_epochs']} post-warm-up epochs "
          f"of not-drift runs; {summary['false_alarm_epochs']} false-alarm epoch(s) in all "
          f"{summary['checked_epochs']} epochs before a change; drift caught in time in "
          f"{summary['detected_in_time']}/{summary['drift_runs']} runs, missed entirely in {summary['missed']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per drift scenario (clean: 5, lr: 3)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--change", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-probes", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=os.environ.get("DRIFT_BENCH_CACHE", "/tmp/drift_bench_cache"))
    parser.add_argument("--replay-only", action="store_true")
    parser.add_argument("--json", default=None, help="write the rows and summary here")
    parser.add_argument("--detector", nargs="*", default=[], metavar="KEY=VALUE",
                        help="DriftDetector arguments for the replay, e.g. sigmas=2.5 horizon=4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    runs = []
    for scenario in args.scenarios:
        for seed in range(SEEDS.get(scenario, args.seeds)):
            path = cache / f"{scenario}_{seed}_e{args.epochs}_c{args.change}_n{args.train_size}.pt"
            if not path.exists():
                if args.replay_only:
                    continue
                start = time.perf_counter()
                run = record_run(scenario, seed, args)
                torch.save(run, path)
                accs = " ".join(f"{e['val_acc']:.2f}" for e in run["epochs"])
                print(f"recorded {path.name} in {time.perf_counter() - start:.0f} s; val_acc {accs}", flush=True)
            runs.append(torch.load(path, weights_only=False))
    options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.detector)}
    rows, summary = evaluate(runs, args.warmup, **options)
    print_table(rows, summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
