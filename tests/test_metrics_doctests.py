import doctest
import importlib

import pytest

MODULES = [
    "lightning_xai.drift",
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
    import subprocess
    import sys

    code = (
        "import sys, lightning_xai.metrics, lightning_xai.drift; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
