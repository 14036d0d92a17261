"""API 0.2 names (CHANGELOG.md): the new names work, the 0.1 names still do with a DeprecationWarning, both at once is
an error naming the argument."""

from __future__ import annotations

import pytest

from lightning_xai import ExplanationMonitor

OLD_AND_NEW = [
    ("metrics", "measures", ("agreement",)),
    ("metric_options", "measure_options", {"sanity": {"threshold": 0.3}}),
    ("drift", "drift_options", {"window": 6}),
    ("display", "display_options", {"alpha": 0.25}),
]


@pytest.mark.parametrize(("old", "new", "value"), OLD_AND_NEW)
def test_old_names_warn_and_mean_the_same(old, new, value):
    with pytest.warns(DeprecationWarning, match=f"`{old}=` is deprecated.*`{new}=`"):
        before = ExplanationMonitor(**{old: value})
    after = ExplanationMonitor(**{new: value})
    assert getattr(before, new) == getattr(after, new) == getattr(after, old)
    assert before.state_key == after.state_key
    with pytest.raises(ValueError, match=f"`{old}=.*left out when `{new}=` is given"):
        ExplanationMonitor(**{old: value, new: value})


def test_messages_name_the_argument_as_written():
    with pytest.raises(ValueError, match=r"`drift_options\['window'\]=0`"):
        ExplanationMonitor(drift_options={"window": 0})
    with pytest.raises(ValueError, match=r"`drift\['window'\]=0`"), pytest.warns(DeprecationWarning):
        ExplanationMonitor(drift={"window": 0})
    with pytest.raises(TypeError, match="metrics=None"), pytest.warns(DeprecationWarning):
        ExplanationMonitor(metrics=None)


def test_writer_aliases_of_0_1_warn():
    import lightning_xai.writers as writers

    for old, new in (("Writer", "Sink"), ("FileWriter", "FileSink"), ("TensorBoardWriter", "TensorBoardSink")):
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new}"):
            assert getattr(writers, old) is getattr(writers, new)
