"""What the monitor prints: its warnings are their message alone (no source-file prefix), others keep theirs."""

from __future__ import annotations

import warnings

from lightning_xai.callbacks._compat import MonitorWarning, rank_zero_warn


def test_monitor_warnings_print_the_message_alone_and_leave_others_alone():
    assert warnings.formatwarning("ExplanationMonitor: x", MonitorWarning, "/a/b.py", 12) == "ExplanationMonitor: x\n"
    other = warnings.formatwarning("y", UserWarning, "/a/b.py", 12)
    assert "/a/b.py:12" in other and "y" in other  # someone else's warning: formatted as before


def test_rank_zero_warn_uses_the_monitor_category(recwarn):
    rank_zero_warn("ExplanationMonitor: something to know")
    (record,) = [w for w in recwarn if "something to know" in str(w.message)]
    assert issubclass(record.category, MonitorWarning) and issubclass(record.category, UserWarning)
    shown = warnings.formatwarning(record.message, record.category, record.filename, record.lineno)
    assert shown == "ExplanationMonitor: something to know\n"
