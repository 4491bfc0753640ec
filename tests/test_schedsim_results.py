"""A simulation's per-job results, metrics, writers and plot.

These need no flux-core: results are built from job records with the
fields of :class:`flux.schedsim.Job`, as a simulation's are (the same
through a real simulation is in ``test_schedsim.py``).
"""

import csv
import io
import json
import types
import xml.etree.ElementTree as ET

import pytest

from flux.schedsim import Outcome, metrics, plot
from flux.schedsim._results import bounded_slowdown, job_result, usage_over_time, write_results

EPOCH = 1000.0


def R(ranks, cores):
    return {"version": 1, "execution": {"R_lite": [{"rank": ranks, "children": {"core": cores}}]}}


def job(jobid, submit, start=None, end=None, R_=None, state="complete", userid=0):
    return types.SimpleNamespace(id=jobid, userid=userid, state=state, t_submit=EPOCH + submit,
                                 t_alloc=None if start is None else EPOCH + start,
                                 t_end=None if end is None else EPOCH + end, R=R_)


def outcome(elapsed=700.0):
    jobs = [job(1, 0, 0, 600, R("0-1", "0-7")),              # 2 nodes x 8 cores, no wait
            job(2, 0, 600, 660, R("0-3", "0-7")),            # waited 600, ran 60
            job(3, 10, 660, 665, R("2", "3"), userid=7),     # waited 650, ran 5 (under the threshold)
            job(4, 20, state="denied", end=20, userid=7)]    # never ran
    return Outcome(tuple(job_result(j, EPOCH) for j in jobs), 32, elapsed)


def test_a_result_has_times_since_the_simulation_began_and_its_allocations_size():
    first, second, third, denied = outcome().results
    assert (first.submit, first.start, first.end, first.wait, first.run) == (0, 0, 600, 0, 600)
    assert (first.nodes, first.cores) == (2, 16)
    assert (third.nodes, third.cores, third.wait, third.run) == (1, 1, 650, 5)
    assert (denied.start, denied.wait, denied.run, denied.nodes, denied.cores) == (None, None, None, 0, 0)
    assert denied.bounded_slowdown is None


def test_bounded_slowdown_counts_a_short_job_as_ten_seconds_and_is_never_below_one():
    assert bounded_slowdown(wait=600, run=60) == 11.0
    assert bounded_slowdown(wait=650, run=5) == (650 + 5) / 10
    assert bounded_slowdown(wait=0, run=3) == 1.0
    assert outcome().results[2].bounded_slowdown == 65.5


def test_metrics_give_waits_slowdowns_makespan_utilisation_and_per_user_means():
    m = outcome().metrics()
    assert (m["jobs"], m["started"]) == (4, 3)
    assert m["mean_wait"] == pytest.approx((0 + 600 + 650) / 3)
    assert m["max_wait"] == 650
    assert m["mean_bounded_slowdown"] == pytest.approx((1 + 11 + 65.5) / 3)
    assert m["max_bounded_slowdown"] == 65.5
    assert m["makespan"] == 665
    assert m["utilisation"] == pytest.approx((16 * 600 + 32 * 60 + 1 * 5) / (32 * 665))
    assert m["per_user"] == {0: {"jobs": 2, "mean_wait": 300.0, "mean_bounded_slowdown": 6.0},
                             7: {"jobs": 2, "mean_wait": 650.0, "mean_bounded_slowdown": 65.5}}


def test_a_running_job_counts_until_now():
    running = Outcome((job_result(job(1, 0, 100, None, R("0", "0-3"), state="running"), EPOCH),), 4, 300.0)
    m = running.metrics()
    assert (m["makespan"], m["utilisation"]) == (300, pytest.approx(4 * 200 / (4 * 300)))
    assert running.usage_over_time() == [(0, 0), (100, 4), (300, 0)]


def test_usage_over_time_is_a_step_function_of_cores_in_use():
    assert outcome().usage_over_time() == [(0, 16), (600, 32), (660, 1), (665, 0)]
    assert usage_over_time((), 0.0) == []


def test_metrics_of_no_jobs_are_zero():
    assert metrics((), 8, 0.0) == {"jobs": 0, "started": 0, "mean_wait": 0.0, "max_wait": 0.0,
                                   "mean_bounded_slowdown": 0.0, "max_bounded_slowdown": 0.0,
                                   "makespan": 0.0, "utilisation": 0.0, "per_user": {}}


def test_csv_has_a_header_one_row_per_job_and_blank_cells_for_what_never_happened(tmp_path):
    path = tmp_path / "jobs.csv"
    outcome().write(str(path), scheduler="sched-fifo")
    rows = list(csv.DictReader(path.open()))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[1] == {"scheduler": "sched-fifo", "id": "2", "userid": "0", "state": "complete", "submit": "0",
                       "start": "600", "end": "660", "wait": "600", "run": "60", "nodes": "4", "cores": "32",
                       "bounded_slowdown": "11"}
    assert (rows[3]["state"], rows[3]["start"], rows[3]["bounded_slowdown"]) == ("denied", "", "")


def test_a_second_policys_rows_follow_the_first_without_a_second_header():
    out = io.StringIO()
    outcome().write(out, "csv", scheduler="a")
    outcome().write(out, "csv", scheduler="b")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 4 + 4 and lines[0].startswith("scheduler,id,")
    assert [line.split(",")[0] for line in lines[1:]] == ["a"] * 4 + ["b"] * 4


def test_json_lines_hold_one_object_per_job_with_nulls(tmp_path):
    path = tmp_path / "jobs.jsonl"
    outcome().write(str(path))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4
    assert rows[2]["bounded_slowdown"] == 65.5 and rows[2]["userid"] == 7
    assert rows[3]["start"] is None


def test_an_unknown_output_format_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"^jobs\.txt: unknown output format '\.txt': name a \.csv, \.json, "):
        outcome().write("jobs.txt")
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        write_results((), io.StringIO(), "xml")


def test_a_plot_is_drawn_to_png_and_svg_with_both_panels_and_each_policy(tmp_path):
    png, svg = tmp_path / "s.png", tmp_path / "s.svg"
    runs = {"sched-fifo": outcome(), "sched-backfill": outcome(650.0)}
    plot(runs, str(png), title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(runs, str(svg))
    text = svg.read_text()
    ET.fromstring(text)  # well-formed SVG
    for label in ("Utilisation", "Wait distribution", "sched-fifo", "sched-backfill", "minutes"):
        assert label in text


def test_a_plot_needs_a_known_extension_and_results():
    with pytest.raises(ValueError, match=r"^out\.gif: a plot is a \.png, \.svg, \.pdf file"):
        plot({"a": outcome()}, "out.gif")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot({}, "out.png")


def test_a_long_runs_utilisation_is_drawn_as_time_weighted_means_over_windows():
    from flux.schedsim._plot import _windows

    steps = [(0.0, 4), (10.0, 0), (30.0, 2), (40.0, 0)]
    starts, means = _windows(steps, bins=4)
    assert starts == [0, 10, 20, 30, 40]
    assert means == [4, 0, 0, 2, 2]
    starts, means = _windows([(0.0, 3), (5.0, 1), (20.0, 0)], bins=2)  # windows of 10 s
    assert means == [pytest.approx(2.0), pytest.approx(1.0), pytest.approx(1.0)]
