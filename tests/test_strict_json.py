"""``summary.json`` is strict JSON (RFC 8259): a statistic that is not a number (Jain's index
of accuracies that are all 0) is written as ``null``, not as Python's ``NaN``, which ``jq``,
a browser's ``JSON.parse`` and most other readers refuse; fedmtl's own readers (the report,
the Python API, ``load_run``) read it back as NaN, and a ``null`` where the run's rows give a
number is refused as any other disagreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report_inputs import ACCURACY, fake_run, no_run_figures  # noqa: F401 - an autouse fixture

from fedmtl import strict_json
from fedmtl.api import RunResult
from fedmtl.report import make_report, read_run
from fedmtl.results import load_run, read_summary


def strict_loads(text: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` as JSON does."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


ZERO = {c: {"left": 0.0, "right": 0.0} for c in range(4)}


def test_a_statistic_that_is_not_a_number_is_written_as_null(tmp_path):
    run = fake_run(tmp_path / "run", 0, ZERO)
    written = strict_loads((run / "summary.json").read_text())
    assert written["final"]["left"]["jain"] is None and written["final"]["left"]["gini"] is None
    assert written["final"]["left"]["mean"] == 0.0  # a mean of zeros is a number
    assert written["overall"]["jain"] is None


def test_fedmtl_s_readers_read_null_statistics_back_as_nan(tmp_path):
    run = fake_run(tmp_path / "run", 0, ZERO)
    for summary in (read_summary(run), load_run(run)["summary"], RunResult(run).summary, read_run(run).summary):
        assert math.isnan(summary["final"]["left"]["jain"]) and math.isnan(summary["overall"]["gini"])
        assert summary["final"]["left"]["mean"] == 0.0 and summary["final"]["left"]["metric"] == "accuracy"
    make_report([run], tmp_path / "report")  # the report's page data are strict JSON too
    assert (tmp_path / "report" / "report.csv").is_file()


def test_a_null_where_the_rows_give_a_number_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", 0, ACCURACY)
    summary = strict_loads((run / "summary.json").read_text())
    summary["final"]["left"]["jain"] = None
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"has final\.left\.jain = nan, where the final round's rows of "
                                         r"metrics\.csv give 0\.9"):
        read_run(run)


def test_a_summary_an_older_fedmtl_wrote_with_nan_still_reads(tmp_path):
    run = fake_run(tmp_path / "run", 0, ZERO)
    text = (run / "summary.json").read_text().replace('"jain": null', '"jain": NaN')
    (run / "summary.json").write_text(text)
    assert math.isnan(read_run(run).summary["final"]["left"]["jain"])


def test_finite_or_null_replaces_every_value_that_is_not_finite():
    value = {"a": [1.0, math.nan, (math.inf, -math.inf)], "b": np.float32("nan"), "c": np.int64(3),
             "d": {"e": "NaN", "f": None, "g": 2}}
    ready = strict_json.finite_or_null(value)
    assert ready == {"a": [1.0, None, [None, None]], "b": None, "c": 3, "d": {"e": "NaN", "f": None, "g": 2}}
    assert strict_loads(strict_json.dumps(value)) == ready
    assert strict_json.nan_for_null({"x": None, "y": [None, 1]})["y"][1] == 1
