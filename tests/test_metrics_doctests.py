import ast
import doctest
import importlib
from pathlib import Path

import pytest

MODULES = [
    "lightning_xai.drift._detector",
    "lightning_xai.metrics.degenerate",
    "lightning_xai.metrics.agreement",
    "lightning_xai.metrics.completeness",
    "lightning_xai.metrics.localisation",
    "lightning_xai.metrics.stability",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_metrics_do_not_import_lightning():
    # Static check (a subprocess import would cost seconds): no module of ours imports Lightning.
    root = Path(__file__).resolve().parents[1] / "lightning_xai"
    files = [*sorted((root / "metrics").glob("*.py")), *sorted((root / "drift").glob("*.py"))]
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")], path
