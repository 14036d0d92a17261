"""The ExplanationMonitor configured from YAML with LightningCLI (needs ``pip install "jsonargparse[signatures]"``).

The model and data are the demo's (``ShapesCNN`` on the generated shapes, no downloads); the monitor is a
``trainer.callbacks`` entry of ``recipes/cli.yaml``. Any of its arguments can be overridden on the command line:

    python recipes/cli.py fit --config recipes/cli.yaml
    python recipes/cli.py fit --config recipes/cli.yaml --trainer.max_epochs 3 --trainer.callbacks.method_options.integrated_gradients.n_steps 8
    python recipes/cli.py fit --config recipes/cli.yaml --print_config       # the full, resolved configuration
    python recipes/cli.py fit --trainer.callbacks.help lightning_xai.ExplanationMonitor   # every argument
    tensorboard --logdir runs/cli --samples_per_plugin images=100

To use your own LightningModule / LightningDataModule, replace the two classes below (or pass
``--model.class_path`` / ``--data.class_path`` with ``subclass_mode_model=True``); the YAML's callback entry stays.
"""

from __future__ import annotations

import os
import sys

from pytorch_lightning.cli import LightningCLI

# `python recipes/cli.py` puts recipes/ on sys.path; the explicit insert also covers `import recipes.cli` and runpy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import around_monitor, print_table_legend, quiet_third_party  # noqa: E402
from demo import ShapesCNN, ShapesData  # noqa: E402

from lightning_xai import ExplanationMonitor  # noqa: E402
from lightning_xai.report import REPORT_FILE  # noqa: E402


class MonitorCLI(LightningCLI):
    """LightningCLI that says what each ExplanationMonitor is doing during its waits and, after ``fit``, summarises
    what it saw (stability, probes flagged, alarms) and where the logs and the report are."""

    def before_fit(self) -> None:
        callbacks = []
        for cb in self.trainer.callbacks:
            callbacks += around_monitor(cb) if isinstance(cb, ExplanationMonitor) else [cb]
        self.trainer.callbacks = callbacks

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        for monitor in (cb for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor)):
            print(f"\n{'epoch':>5} | " + " ".join(f"{'stability ' + m[:12]:>22}" for m in monitor.methods)
                  + " | probes flagged | alarm")
            for record in monitor.history:
                # a method the budget did not run this epoch has no entry (max_overhead: auto): nan
                stability = [_mean(record["stability"].get(m, [])) for m in monitor.methods]
                flagged = sum(sum(record["flags"].get(m, [])) for m in monitor.methods)
                alarm = "ALARM" if record.get("alarm") else "."
                print(f"{record['epoch']:>5} | " + " ".join(f"{v:>22.3f}" for v in stability)
                      + f" | {flagged:^14} | {alarm:^5}")
            print_table_legend()
        if trainer.logger is not None and trainer.logger.log_dir:
            print(f"\nLogs: {os.path.abspath(trainer.logger.log_dir)}")
            print(f"Open them with:  tensorboard --logdir {trainer.logger.log_dir} --samples_per_plugin images=100")
            report = os.path.join(os.path.abspath(trainer.logger.log_dir), REPORT_FILE)
            if os.path.isfile(report):
                print(f"Report: {report}")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


def main(args: list[str] | None = None, run: bool = True) -> MonitorCLI:
    quiet_third_party()
    return MonitorCLI(ShapesCNN, ShapesData, args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
