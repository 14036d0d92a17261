"""Drift-alarm benchmark: a generated scenario suite, split once into a tuning and an evaluation part.

Each run (``bench/drift_scenarios.py``) trains the demo CNN or a small ResNet on the shapes data (32 px, 768
training images per epoch, or the demo's 2,048 for the calm-regime runs and the ``demo`` part; 14 epochs, change at
epoch 7) and keeps, per epoch, what the monitor hands the drift
detector by default: Grad-CAM and saliency on the detection pool (the 16 display probes + 48 more validation images +
64 training images as they are at that epoch) and Integrated Gradients (16 steps) on the display probes, pooled to
16 x 16. Runs are cached under ``--cache``; the detector is then *replayed* on the cached series (seconds).

    python bench/drift.py record --jobs 2          # record missing runs (40-200 s per run per core; 90 runs)
    python bench/drift.py report --part eval       # the default detector on the evaluation part
    python bench/drift.py report --part tune       # ... on the tuning part (where its constants were chosen)
    python bench/drift.py curve --part eval        # detection per family vs false-alarm epochs, threshold varied
    python bench/drift.py pool --part eval         # what the detection pool size buys
    python bench/drift.py segmentation --seeds 301 # a cue in a segmentation model's training images (U-Net)

Targets (evaluation part, default detector): at most 1 false-alarm epoch in >= 100 post-warm-up epochs of clean and
LR-step runs; sudden changes (cue on the probes, domain shift, label swap, re-initialisation, a change at an LR step)
alarmed at the change epoch in >= 90 % of runs; training-only cues and cues without a fixed position within 2 epochs
in >= 80 %; ramps before the cue is on half the training images in >= 80 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from drift_scenarios import Scenario, record_run, scenario_from_dict, suite  # noqa: E402

from lightning_xai.drift import DriftDetector  # noqa: E402

CACHE = os.environ.get("DRIFT_BENCH_CACHE", "/tmp/drift_suite_cache")
SUDDEN = ("cue_sudden", "domain", "label_swap", "reinit", "lr_and_cue")
NO_MASKS = False  # --no-masks: replay as for a dataset without object masks (no "mass" streams)
TARGETS = {"sudden": 0.9, "cue_unplaced": 0.8, "cue_train_only": 0.8, "ramp": 0.8}


# ---------------------------------------------------------------------------------------------------- recording
def _path(cache: Path, sc: Scenario) -> Path:
    return cache / f"{sc.name}.pt"


def _record_one(sc: Scenario, cache: str) -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    run = record_run(sc)
    path = _path(Path(cache), sc)
    tmp = path.with_suffix(".tmp")
    torch.save(run, tmp)
    tmp.replace(path)
    accs = " ".join(f"{e['val_acc']:.2f}" for e in run["epochs"])
    return f"recorded {sc.name} in {time.perf_counter() - start:.0f} s; val_acc {accs}"


def record(scenarios: Sequence[Scenario], cache: Path, jobs: int) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    todo = [sc for sc in scenarios if not _path(cache, sc).exists()]
    print(f"{len(scenarios) - len(todo)} cached, {len(todo)} to record with {jobs} process(es)", flush=True)
    if jobs <= 1:
        for sc in todo:
            print(_record_one(sc, str(cache)), flush=True)
        return
    with ProcessPoolExecutor(jobs) as pool:
        for line in pool.map(_record_one, todo, [str(cache)] * len(todo)):
            print(line, flush=True)


def load(scenarios: Sequence[Scenario], cache: Path) -> list[dict[str, Any]]:
    runs = []
    for sc in scenarios:
        path = _path(cache, sc)
        if path.exists():
            run = torch.load(path, weights_only=False)
            run["sc"] = scenario_from_dict(run["scenario"])
            runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------------- replay
def epoch_inputs(run: dict[str, Any], e: dict[str, Any], pool: int | None = None) -> dict[str, Any]:
    """What the monitor hands the detector at one epoch: the cheap maps on the pool, IG on the display probes."""
    p = run["num_probes"]
    n_val, n_train = run["pool_val"], run["pool_train"]
    if pool is None:
        idx = torch.arange(n_val + n_train)
    else:  # a smaller pool: the display probes, then validation and training samples in equal parts
        extra = max(0, pool - p)
        idx = torch.cat([torch.arange(p), torch.arange(p, p + min(n_val - p, extra // 2)),
                         torch.arange(n_val, n_val + min(n_train, extra - extra // 2))])
    maps = {m: e["maps"][m][idx].float()[:, None] for m in ("grad_cam", "saliency")}
    origin = (idx >= n_val).long()
    return {"maps": maps, "probe_maps": {"integrated_gradients": e["maps"]["integrated_gradients"].float()[:, None]},
            "pred": e["pred"][idx].long(), "labels": e["targets"][idx].long(),
            "masks": None if NO_MASKS else run["masks"][idx].float(),
            "origin": origin, "num_display": p}


def lr_event(run: dict[str, Any], epoch: int) -> str | None:
    sc: Scenario = run["sc"]
    if sc.lr is not None and epoch == sc.change:
        return f"learning rate x{sc.lr:g} since the previous explained epoch"
    return None


def replay(run: dict[str, Any], detector: DriftDetector, pool: int | None = None) -> list[Any]:
    reports = []
    for e in run["epochs"]:
        inp = epoch_inputs(run, e, pool)
        reports.append(detector.update(e["epoch"], {**inp["maps"], **inp["probe_maps"]}, pred=inp["pred"],
                                       labels=inp["labels"], masks=inp["masks"], origin=inp["origin"],
                                       num_display=inp["num_display"], event=lr_event(run, e["epoch"])))
    return reports


def score_run(run: dict[str, Any], alarms: list[int], warmup: int) -> dict[str, Any]:
    sc: Scenario = run["sc"]
    deadline = sc.deadline()
    if not sc.is_drift:
        false = [e for e in alarms if e >= warmup]
        checked = sum(1 for e in run["epochs"] if e["epoch"] >= warmup)
        return {"name": sc.name, "family": sc.family, "arch": sc.arch, "false": false, "checked": checked,
                "first": None, "deadline": None, "ok": not false, "alarms": alarms}
    change = sc.change
    false = [e for e in alarms if warmup <= e < change]
    first = next((e for e in alarms if e >= change), None)
    return {"name": sc.name, "family": sc.family, "arch": sc.arch, "false": false,
            "checked": sum(1 for e in run["epochs"] if warmup <= e["epoch"] < change), "first": first,
            "deadline": deadline, "ok": first is not None and first <= deadline, "alarms": alarms}


def group_of(family: str) -> str:
    return "sudden" if family in SUDDEN else family


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    quiet = [r for r in rows if r["deadline"] is None]
    out: dict[str, Any] = {"quiet_epochs": sum(r["checked"] for r in quiet),
                           "quiet_false": sum(len(r["false"]) for r in quiet),
                           "pre_change_epochs": sum(r["checked"] for r in rows if r["deadline"] is not None),
                           "pre_change_false": sum(len(r["false"]) for r in rows if r["deadline"] is not None)}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["deadline"] is not None:
            groups.setdefault(group_of(r["family"]), []).append(r)
    out["groups"] = {g: (sum(r["ok"] for r in rs), len(rs)) for g, rs in groups.items()}
    return out


def evaluate(runs: list[dict[str, Any]], make_detector, pool: int | None = None) -> tuple[list[dict], dict]:
    rows = []
    for run in runs:
        det = make_detector()
        reports = replay(run, det, pool)
        rows.append(score_run(run, [r.epoch for r in reports if r.alarm], det.warmup_epochs))
    return rows, summarise(rows)


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'run':<58} {'deadline':>8} {'first alarm':>11} {'false alarms':>12}  in time")
    for r in rows:
        first = "-" if r["first"] is None else str(r["first"])
        dl = "-" if r["deadline"] is None else str(r["deadline"])
        ok = "yes" if r["ok"] else "NO"
        print(f"{r['name']:<58} {dl:>8} {first:>11} {','.join(map(str, r['false'])) or '.':>12}  {ok}")


def print_summary(summary: dict[str, Any], label: str) -> None:
    print(f"[{label}] false alarms: {summary['quiet_false']} epoch(s) in {summary['quiet_epochs']} post-warm-up epochs "
          f"of clean and LR-step runs; {summary['pre_change_false']} in {summary['pre_change_epochs']} pre-change "
          f"epochs of drift runs")
    for g, (ok, n) in sorted(summary["groups"].items()):
        target = TARGETS.get(g)
        met = "met" if target is not None and ok >= target * n else "NOT met"
        mark = "" if target is None else f" (target >= {100 * target:.0f}%: {met})"
        print(f"[{label}]   {g:<15} in time {ok}/{n} = {ok / n:.0%}{mark}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("record", "report", "curve", "pool", "list", "trace", "tune",
                                            "segmentation"))
    parser.add_argument("--part", choices=("tune", "eval", "demo", "all"), default="eval")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cache", default=os.environ.get("DRIFT_BENCH_CACHE", "/tmp/drift_suite_cache"))
    parser.add_argument("--detector", nargs="*", default=[], metavar="KEY=VALUE",
                        help="DriftDetector keyword arguments for the replay, e.g. sigmas=3")
    parser.add_argument("--rows", action="store_true", help="print one line per run")
    parser.add_argument("--no-masks", action="store_true", help="replay without object masks (no mass streams)")
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="pool: detection pool sizes to compare (16: the display probes only)")
    parser.add_argument("--json", default=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "segmentation":  # a cue planted in a segmentation model's training images (its own script)
        from drift_segmentation import main as segmentation_main

        segmentation_main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    global NO_MASKS, CACHE
    NO_MASKS, CACHE = args.no_masks, args.cache
    scenarios = [sc for sc in suite() if args.part == "all" or sc.part == args.part]
    cache = Path(args.cache)
    if args.command == "list":
        for sc in scenarios:
            print(sc.part, sc.name, "cached" if _path(cache, sc).exists() else "")
        return
    if args.command == "record":
        record(scenarios, cache, args.jobs)
        return
    runs = load(scenarios, cache)
    print(f"{len(runs)}/{len(scenarios)} runs of part {args.part!r} cached")
    options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.detector)}
    if args.command == "report":
        rows, summary = evaluate(runs, lambda: DriftDetector(**options))
        if args.rows:
            print_rows(rows)
        print_summary(summary, args.part)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    elif args.command == "tune":
        if args.part != "tune":
            parser.error("constants are chosen on the tuning part only: --part tune")
        for caught, quiet, pre, rule in grid_search(runs, max_false=1)[:25]:
            print(f"caught {caught}, false {quiet} quiet + {pre} pre-change: {rule}")
    elif args.command == "trace":
        for run in runs:
            det = DriftDetector(**options)
            print(f"{run['name']} (change {run['sc'].change}, deadline {run['sc'].deadline()})")
            for r in replay(run, det):
                top = sorted(((m, k, v) for m, sc in r.scores.items() for k, v in sc.items() if k != "score"),
                             key=lambda t: -t[2])[:3]
                tops = " ".join(f"{m[:3]}:{k}={v * det.threshold:+.1f}" for m, k, v in top)
                print(f"  {r.epoch:>2} {'ALARM' if r.alarm else '     '} sudden {r.evidence.get('sudden', 0):.2f} "
                      f"acc {r.evidence.get('accumulated', 0):.2f} | {tops}")
    elif args.command == "curve":
        print_curve(runs, options, args.part)
    elif args.command == "pool":
        for pool in args.pool_sizes:
            full = runs[0]["pool_val"] + runs[0]["pool_train"] if runs else 0
            summary = rule_summary(runs, stream_values(runs, None if pool >= full else pool), **options)
            print_summary(summary, f"{args.part}, pool {pool}")


def default_rule(**overrides: Any) -> tuple[dict[str, Any], Any]:
    """The default detector's rule constants and its stream filter (what DriftDetector() decides with)."""
    det = DriftDetector()
    rule = {k: getattr(det, k) for k in ("window", "threshold", "slack", "cusum_threshold", "learn_below",
                                         "min_spread", "event_factor", "settle", "gap_spread", "prior_weight")}
    rule.update(overrides)
    stats = det.statistics
    return rule, (lambda key: key.split("|", 1)[1].split("/")[0] in stats)


def rule_summary(runs: list[dict[str, Any]], values: list[list[dict[str, float]]], **overrides: Any) -> dict:
    rule, keep = default_rule(**overrides)
    warmup = DriftDetector().warmup_epochs
    rows = [score_run(run, rule_alarms(run, vals, warmup, keep, **rule), warmup) for run, vals in zip(runs, values)]
    return summarise(rows)


def print_curve(runs: list[dict[str, Any]], options: dict[str, Any], part: str) -> None:
    """Detection in time per group and false-alarm epochs as the alarm thresholds vary (the operating curve): both
    the sudden threshold and the CUSUM threshold are scaled by the same factor."""
    values = stream_values(runs)
    rule, _ = default_rule(**options)
    print(f"operating curve on part {part!r} (default: threshold {rule['threshold']:g}, "
          f"cusum_threshold {rule['cusum_threshold']:g}; factor 1.00)")
    header = None
    for factor in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0):
        summary = rule_summary(runs, values, **{**options, "threshold": rule["threshold"] * factor,
                                                "cusum_threshold": rule["cusum_threshold"] * factor})
        groups = sorted(summary["groups"])
        if header is None:
            header = groups
            print(f"{'factor':>6} {'false/quiet':>12} {'false/pre':>10} " + " ".join(f"{g:>15}" for g in groups))
        cells = " ".join(f"{summary['groups'][g][0]:>7}/{summary['groups'][g][1]:<7}" for g in groups)
        print(f"{factor:>6.2f} {summary['quiet_false']:>5}/{summary['quiet_epochs']:<6} "
              f"{summary['pre_change_false']:>4}/{summary['pre_change_epochs']:<5} {cells}")


# ---------------------------------------------------------------------------------------------------- tuning
def stream_values(runs: list[dict[str, Any]], pool: int | None = None) -> list[list[dict[str, float]]]:
    """Per run, per epoch: every stream's value (they do not depend on the rule's constants). Cached next to the
    runs, keyed by the measuring code (drift/_detector.py, drift/_stats.py), so a grid search starts in seconds."""
    import hashlib

    root = Path(__file__).resolve().parents[1] / "lightning_xai" / "drift"
    code = hashlib.sha256(b"".join((root / f).read_bytes() for f in ("_detector.py", "_stats.py"))).hexdigest()[:12]
    out = []
    for run in runs:
        path = Path(CACHE) / f"values_{run['name']}_p{pool}_m{int(not NO_MASKS)}_{code}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
            continue
        values = [r.statistics for r in replay(run, DriftDetector(), pool)]
        path.write_text(json.dumps(values))
        out.append(values)
    return out


def rule_alarms(run: dict[str, Any], values: list[dict[str, float]], warmup: int, keep, **rule: Any) -> list[int]:
    """Replay only the alarm rule (drift/_rule.py) on recorded stream values."""
    from lightning_xai.drift._rule import AlarmRule

    ar = AlarmRule(**rule)
    alarms = []
    for i, (e, vals) in enumerate(zip(run["epochs"], values)):
        d = ar.decide({k: v for k, v in vals.items() if keep(k)}, warmup=i < warmup,
                      event=lr_event(run, e["epoch"]) is not None)
        if d.alarm:
            alarms.append(e["epoch"])
    return alarms


def grid_search(runs: list[dict[str, Any]], max_false: int) -> list[tuple[int, int, int, dict[str, Any]]]:
    """Every combination of the rule's constants on these runs: (caught in time, quiet false, pre-change false,
    constants), best first among those with at most ``max_false`` false-alarm epochs on clean and LR-step runs."""
    import itertools

    values = stream_values(runs)
    base = ("lag", "class", "mass", "gap")
    stats_options = {"lag+class+mass+gap": base, "+common": base + ("common",)}
    results = []
    grid = itertools.product((4.5, 5.0, 5.5, 6.0), (1.5, 2.0), (8.0, 12.0, 1e5), (0.3, 0.35, 0.45), (0.08, 0.12),
                             (0.0, 2.0), stats_options)
    for threshold, slack, cusum, spread, gap_spread, prior_weight, stats in grid:
        rule = {"window": 4, "threshold": threshold, "slack": slack, "cusum_threshold": cusum,
                "learn_below": 0.5, "min_spread": spread, "event_factor": 2.0, "settle": 1,
                "gap_spread": gap_spread, "prior_weight": prior_weight}
        allowed = stats_options[stats]

        def keep(key: str, allowed=allowed) -> bool:
            return key.split("|", 1)[1].split("/")[0] in allowed

        rows = [score_run(run, rule_alarms(run, vals, 3, keep, **rule), 3) for run, vals in zip(runs, values)]
        s = summarise(rows)
        caught = sum(ok for ok, _ in s["groups"].values())
        results.append((caught, s["quiet_false"], s["pre_change_false"], {**rule, "statistics": stats}))
    ok = [r for r in results if r[1] <= max_false]
    return sorted(ok, key=lambda r: (-r[0], r[1] + r[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
