"""Cost of each view per round, on the demo's model and data.

Setting: ``recipes/demo.py``'s ``ShapesCNN`` (untrained weights are as costly as trained ones), 32 px images, the
demo's marked probe set: 16 probes and a pool of 128, layer ``features`` (the demo's Grad-CAM layer), CPU,
``torch.set_num_threads(1)``. Each view runs on a fresh :class:`ViewContext` (so it pays for the shared forward
passes itself), ``--repeats`` times; the minimum is printed, with the end-of-fit structured attention graphs for 4
probes. For scale, the script also times one training epoch of the demo (2048 images, batch 64, forward + backward +
Adam).

Usage::

    python bench/views.py               # 3 repeats
    python bench/views.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes"))

from demo import ShapesCNN, ShapesData  # noqa: E402

from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD  # noqa: E402
from lightning_xai.probes import select_probes  # noqa: E402
from lightning_xai.views import VIEWS, ViewContext, attention_graphs, concepts_of  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = ShapesData()
    model = ShapesCNN()
    probes = select_probes(data.probe_set, 16)
    pool = select_probes(data.probe_set, 128)
    concepts = concepts_of(data.probe_set, pool, data.probe_set.classes)

    def context() -> ViewContext:
        return ViewContext(model, "features", probes.images, probes.labels, probes.ids, pool.images, pool.labels,
                           pool.ids, concepts, data.probe_set.classes, SHAPES_MEAN, SHAPES_STD)

    print(f"{'view':<16} {'seconds':>8}")
    for name, cls in VIEWS.items():
        view = cls()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            view(context())
            best = min(best, time.perf_counter() - start)
        print(f"{name:<16} {best:8.3f}")
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        preds = model.eval()(probes.images[:4]).argmax(1)
        attention_graphs(model, probes.images[:4], preds)
        best = min(best, time.perf_counter() - start)
    print(f"{'attention_graphs':<16} {best:8.3f}  (4 probes, end of fit only)")

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = data.train_dataloader()
    batches = [(x, y) for x, y, _ in loader]
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    print(f"{'(train epoch)':<16} {time.perf_counter() - start:8.3f}  (2048 images, excluding data generation)")


if __name__ == "__main__":
    main()
