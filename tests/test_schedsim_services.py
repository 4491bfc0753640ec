"""The stand-in services of flux.schedsim, with a scheduler of this library's
own that speaks RFC 27 (no flux-core needed: these run everywhere)."""

import errno
import io

import pytest

from flux.schedsim import EPOCH, Simulation, read_swf

# First come, first served on one-core slots; R names the slots as cores of rank 0.
TINY_SCHEDULER = '''
import heapq
from flux.brokermod import BrokerModule, request_handler
from flux.constants import FLUX_RPC_STREAMING

class tinysched(BrokerModule):
    def __init__(self, h, *args):
        super().__init__(h, *args)
        self.free_cores = None
        self.queue = []
        self.requests = {}

    def setup(self):
        self.handle.service_register("sched").get()
        acquire = self.handle.rpc("resource.acquire", flags=FLUX_RPC_STREAMING).get()
        lite = acquire["resources"]["execution"]["R_lite"][0]["children"]["core"]
        last = int(lite.split("-")[-1])
        self.free_cores = list(range(last + 1))
        hello = self.handle.rpc("job-manager.sched-hello", {"partial-ok": False}, flags=FLUX_RPC_STREAMING)
        try:
            hello.get()
        except OSError:
            pass
        self.handle.rpc("job-manager.sched-ready", {"mode": "limited", "limit": 2}).get()

    def cores_of(self, jobspec):
        return jobspec["resources"][0]["count"] * jobspec["resources"][0]["with"][0]["count"]

    @request_handler("sched.alloc", prefix=False)
    def alloc(self, msg):
        p = msg.payload
        if self.cores_of(p["jobspec"]) > 4:
            self.handle.respond(msg, {"id": p["id"], "type": 2, "note": "more cores than there are"})
            return
        heapq.heappush(self.queue, (p["id"], p["jobspec"]))
        self.requests[p["id"]] = msg
        self.handle.respond(msg, {"id": p["id"], "type": 1, "annotations": {"sched": {"queued": True}}})
        self.schedule()

    def schedule(self):
        while self.queue and self.cores_of(self.queue[0][1]) <= len(self.free_cores):
            jobid, spec = heapq.heappop(self.queue)
            n = self.cores_of(spec)
            cores, self.free_cores = self.free_cores[:n], self.free_cores[n:]
            R = {"version": 1, "execution": {"R_lite": [{"rank": "0", "children": {"core": ",".join(map(str, cores))}}]}}
            self.handle.respond(self.requests.pop(jobid), {"id": jobid, "type": 0, "R": R,
                                                          "annotations": {"sched": {"queued": None}}})

    @request_handler("sched.free", prefix=False)
    def free(self, msg):
        cores = msg.payload["R"]["execution"]["R_lite"][0]["children"]["core"]
        self.free_cores = sorted(self.free_cores + [int(c) for c in cores.split(",")])
        self.schedule()

    @request_handler("sched.cancel", prefix=False)
    def cancel(self, msg):
        jobid = msg.payload["id"]
        self.queue = [entry for entry in self.queue if entry[0] != jobid]
        heapq.heapify(self.queue)
        self.handle.respond(self.requests.pop(jobid), {"id": jobid, "type": 3})
'''


@pytest.fixture
def tiny(write, flux_sched_simulation):
    return flux_sched_simulation(write("tinysched.py", TINY_SCHEDULER), nodes=1, cores=4)


def test_jobs_start_when_allocated_and_end_after_their_run_time(tiny):
    first = tiny.submit(ntasks=3, runtime=100)
    second = tiny.submit(ntasks=2, runtime=10)
    third = tiny.submit(ntasks=1, runtime=10)
    tiny.run()
    jobs = tiny.jobs
    assert tiny.allocations == [first, second, third]
    assert [jobs[j].t_alloc - EPOCH for j in (first, second, third)] == [0, 100, 100]
    assert jobs[first].t_end == EPOCH + 100
    assert jobs[second].R["execution"]["R_lite"][0]["children"]["core"] == "0,1"
    assert jobs[first].annotations == {}  # a null annotation removes the key, as flux-core merges them
    assert tiny.summary()["utilisation"] == pytest.approx((3 * 100 + 2 * 10 + 10) / (4 * 110))


def test_limited_mode_sends_no_more_alloc_requests_than_the_scheduler_asked_for(tiny):
    for _ in range(5):
        tiny.submit(ntasks=4, runtime=10)
    assert (tiny._jm.limit, tiny._jm.outstanding) == (2, 2)
    tiny.run()
    assert [tiny.jobs[j].t_alloc - EPOCH for j in range(1, 6)] == [0, 10, 20, 30, 40]


def test_a_denied_job_ends_with_the_schedulers_note(tiny):
    job = tiny.submit(ntasks=5, runtime=10)
    tiny.run()
    assert (tiny.jobs[job].state, tiny.jobs[job].note) == ("denied", "more cores than there are")


def test_cancel_ends_a_pending_job_through_the_scheduler_and_a_running_one_at_once(tiny):
    running = tiny.submit(ntasks=4, runtime=100)
    sent = tiny.submit(ntasks=4, runtime=100)  # the scheduler holds its alloc request
    queued = tiny.submit(ntasks=4, runtime=100)  # beyond the limit: still with the job manager
    last = tiny.submit(ntasks=1, runtime=1)
    tiny.run(until=EPOCH + 5)
    tiny.cancel(sent)
    tiny.cancel(queued)
    tiny.cancel(running)
    tiny.run()
    assert [tiny.jobs[j].state for j in (running, sent, queued, last)] == ["canceled", "canceled", "canceled", "complete"]
    assert tiny.jobs[last].t_alloc == EPOCH + 5
    with pytest.raises(OSError) as info:
        tiny.cancel(99)
    assert info.value.errno == errno.ENOENT


def test_a_job_nothing_will_ever_start_is_a_clear_error_not_a_hang(tiny):
    tiny.submit(ntasks=4, runtime=10)
    tiny.submit(ntasks=4, runtime=10)
    tiny.broker.remove("tinysched")  # the scheduler goes: nothing will allocate the second job
    with pytest.raises(OSError) as info:
        tiny.run()
    assert info.value.errno == errno.EDEADLK and "every job to end" in str(info.value)


def test_submitting_in_the_past_is_refused(tiny):
    tiny.run(until=EPOCH + 10)
    with pytest.raises(ValueError, match="before the simulation's clock"):
        tiny.submit(at=EPOCH + 5)


def test_read_swf_takes_the_fields_a_replay_needs_and_skips_jobs_that_never_ran():
    jobs = list(read_swf(io.StringIO("; header\n1 0 -1 60 4 -1 -1 8 120 -1 1 1 1 -1 1 -1 -1 -1\n"
                                     "2 5 -1 0 4 -1 -1 4 60 -1 0 1 1 -1 1 -1 -1 -1\n"
                                     "3 9 -1 30 4 -1 -1 -1 -1 -1 1 1 1 -1 1 -1 -1 -1\n")))
    assert [(j.number, j.submit, j.runtime, j.processors, j.requested_time) for j in jobs] == [
        (1, 0.0, 60.0, 8, 120.0), (3, 9.0, 30.0, 4, 30.0)]


def test_read_swf_names_the_line_that_is_not_swf():
    with pytest.raises(ValueError, match="line 2: 3 fields"):
        list(read_swf(io.StringIO("; ok\n1 2 3\n")))
    with pytest.raises(ValueError, match="line 1: "):
        list(read_swf(io.StringIO("1 x -1 60 4 -1 -1 8 120 -1 1 1 1 -1 1 -1 -1 -1\n")))


def test_a_scheduler_name_without_flux_core_is_refused_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-sched"):
        Simulation("no-such-sched")
    with pytest.raises(FileNotFoundError, match="no such scheduler file"):
        Simulation(str(tmp_path / "missing.py"))


def test_simulate_without_flux_core_says_what_it_needs_in_one_line(tmp_path, monkeypatch, capsys):
    from flux._brokermod_cli import main

    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", str(tmp_path / "no-flux"))
    monkeypatch.setitem(__import__("sys").modules, "flux.scheduler", None)  # as without flux-core 0.88+
    assert main(["simulate", "--swf", "x.swf", "--cores", "4", "sched-fifo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flux-brokermod: simulate: needs flux-core 0.88+'s Python bindings (flux.scheduler): "
                   "no flux on PATH (nor $FLUX_BROKERMOD_FLUX)"]


def test_the_fixture_skips_saying_why_when_flux_cores_scheduler_cannot_run(flux_sched_simulation, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "flux.scheduler", None)  # as without flux-core 0.88+
    with pytest.raises(pytest.skip.Exception, match="sched-fifo needs flux-core 0.88\\+'s Python bindings"):
        flux_sched_simulation("sched-fifo")


def test_pending_jobs_are_sent_again_to_a_reloaded_scheduler(tiny):
    first = tiny.submit(ntasks=4, runtime=100)
    waiting = tiny.submit(ntasks=2, runtime=10)  # its alloc request is with the old scheduler
    tiny.run(until=EPOCH + 10)
    tiny.reload_scheduler()
    tiny.run()
    assert tiny.jobs[waiting].state == "complete"
    # the tiny scheduler's hello does not take running jobs back: it hands cores 0-1 out again at once
    assert tiny.jobs[waiting].t_alloc == EPOCH + 10
    assert tiny.allocations == [first, waiting]


def test_a_burst_reaches_the_scheduler_together_and_single_submissions_one_by_one(tiny):
    with tiny.burst():
        first = tiny.submit(ntasks=1, runtime=10)
        assert tiny.jobs[first].state == "pending"  # not yet seen by the scheduler
        second = tiny.submit(ntasks=1, runtime=10)
    assert [tiny.jobs[j].state for j in (first, second)] == ["running", "running"]
    third = tiny.submit(ntasks=1, runtime=10)
    assert tiny.jobs[third].state == "running"  # handled before submit() returned
    with pytest.raises(RuntimeError, match="do not nest"):
        with tiny.burst():
            with tiny.burst():
                pass


def test_in_limited_mode_a_more_urgent_job_takes_back_the_least_urgent_alloc_request(tiny):
    """As flux-core's alloc_queue_recalc_pending(): the tiny scheduler's limit is 2."""
    blocker = tiny.submit(ntasks=4, runtime=10)
    low = [tiny.submit(ntasks=4, runtime=10, priority=1) for _ in range(3)]
    urgent = tiny.submit(ntasks=4, runtime=10, priority=20)
    assert sorted(tiny.scheduler.instance.requests) == [low[0], urgent]  # low[1]'s request was cancelled
    assert tiny.jobs[low[1]]._alloc_sent is False  # it waits with the job manager again
    tiny.run()
    assert sorted(tiny.allocations) == [blocker, *low, urgent]
    assert all(tiny.jobs[j].state == "complete" for j in low)


def test_a_held_job_waits_until_released_and_a_held_alloc_request_is_given_back(tiny):
    held = tiny.submit(ntasks=1, runtime=10, priority=0)
    tiny.submit(ntasks=4, runtime=10)
    waiting = tiny.submit(ntasks=4, runtime=10)  # its alloc request is with the scheduler
    tiny.prioritize(waiting, 0)
    with pytest.raises(OSError) as info:
        tiny.run()
    assert info.value.errno == errno.EDEADLK and f"jobs {held},{waiting} never ended" in str(info.value)
    assert tiny.jobs[waiting]._alloc_sent is False
    tiny.prioritize(held, 16)
    tiny.prioritize(waiting, 16)
    tiny.run()
    assert tiny.jobs[held].t_alloc == EPOCH + 10 and tiny.jobs[waiting].t_alloc == EPOCH + 20


def test_a_job_ends_at_its_time_limit_as_a_real_instance_ends_it(tiny):
    job = tiny.submit(ntasks=1, runtime=100, duration=10)
    tiny.run()
    assert (tiny.jobs[job].state, tiny.jobs[job].t_end) == ("timeout", EPOCH + 10)


@pytest.mark.parametrize("kwargs, named", [
    ({"runtime": float("nan")}, "runtime"), ({"runtime": -5}, "runtime"), ({"runtime": float("inf")}, "runtime"),
    ({"duration": float("nan")}, "duration"), ({"at": float("inf")}, "at"), ({"priority": -1}, "priority"),
    ({"priority": 2 ** 32}, "priority"), ({"priority": 1.5}, "priority"), ({"ncores": 1.5}, "ncores"),
    ({"nnodes": -1}, "nnodes"), ({"ngpus": float("nan")}, "ngpus"),
])
def test_a_bad_submission_is_refused_naming_the_argument_and_changes_nothing(tiny, kwargs, named):
    with pytest.raises(ValueError, match=f"^{named} must be"):
        tiny.submit(**kwargs)
    assert tiny.jobs == {}


def test_bad_instance_shapes_and_times_are_refused_naming_them(write, tiny):
    path = write("tinysched2.py", TINY_SCHEDULER)
    for kwargs, named in [({"nodes": 2.5}, "nodes"), ({"cores": 0}, "cores"), ({"gpus": -1}, "gpus"),
                          ({"epoch": float("nan")}, "epoch")]:
        with pytest.raises(ValueError, match=f"^{named} must be"):
            Simulation(path, **kwargs)
    with pytest.raises(ValueError, match="^until must be"):
        tiny.run(until=float("nan"))


def test_a_closed_simulation_says_so(write):
    sim = Simulation(write("tinysched3.py", TINY_SCHEDULER))
    sim.close()
    for call in (lambda: sim.submit(), sim.run, lambda: sim.broker, sim.reload_scheduler):
        with pytest.raises(RuntimeError, match="this simulation is closed"):
            call()


def test_summary_while_jobs_run_counts_up_to_now(tiny):
    tiny.submit(ntasks=4, runtime=100)
    tiny.run(until=EPOCH + 50)
    assert tiny.summary()["makespan"] == 50 and tiny.summary()["utilisation"] == 1.0


def test_prioritizing_an_unknown_job_is_enoent_as_cancel_is(tiny):
    with pytest.raises(OSError) as info:
        tiny.prioritize(42, 5)
    assert (info.value.errno, info.value.strerror) == (errno.ENOENT, "no job 42")


def test_read_swf_refuses_non_finite_and_negative_times_and_reads_any_comment(tmp_path):
    for line, why in [("1 nan -1 60 4 -1 -1 4 60", "times must be finite"),
                      ("1 0 -1 inf 4 -1 -1 4 60", "times must be finite"),
                      ("1 -100 -1 60 4 -1 -1 4 60", "submit time -100 is before")]:
        with pytest.raises(ValueError, match=f"line 1: {why}"):
            list(read_swf(io.StringIO(line + " -1 1 1 1 -1 1 -1 -1 -1\n")))
    trace = tmp_path / "latin1.swf"
    trace.write_bytes(b"; caf\xe9\n1 0 -1 60 4 -1 -1 4 60 -1 1 1 1 -1 1 -1 -1 -1\n")
    assert [j.number for j in read_swf(str(trace))] == [1]
    with pytest.raises(ValueError, match="limit must be 0"):
        list(read_swf(str(trace), limit=-1))


def test_simulate_refuses_counts_below_one_as_a_bad_command_line(capsys):
    from flux._brokermod_cli import main

    with pytest.raises(SystemExit) as info:
        main(["simulate", "--swf", "x.swf", "--cores", "0", "sched-fifo"])
    assert info.value.code == 2 and "argument --cores: 0 is below 1" in capsys.readouterr().err


def test_the_fixture_skips_a_scheduler_file_that_needs_flux_cores_bindings(flux_sched_simulation, monkeypatch):
    import os

    monkeypatch.setitem(__import__("sys").modules, "flux.scheduler", None)  # as without flux-core 0.88+
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                           "sched-shortest.py")
    with pytest.raises(pytest.skip.Exception, match="sched-shortest.py needs flux-core 0.88\\+'s Python bindings"):
        flux_sched_simulation(example)


def test_a_failed_rank_ends_the_job_running_there_and_the_outcome_says_so(tiny):
    job = tiny.submit(ncores=2, runtime=100)
    tiny.fail("0", at=EPOCH + 40)
    tiny.run(until=EPOCH + 50)
    assert (tiny.jobs[job].state, tiny.jobs[job].t_end) == ("failed", EPOCH + 40)
    assert tiny.jobs[job].note == "node-failure: lost contact with job shell on rank 0"
    result = tiny.outcome().results[0]
    assert (result.state, result.start, result.end, result.run, result.cores) == ("failed", 0, 40, 40, 2)


def test_the_resource_stream_tells_the_scheduler_of_each_change_once(tiny):
    resource = tiny.broker.modules["resource"].instance
    answers = []
    real_respond = resource.handle.respond
    resource.handle.respond = lambda msg, payload=None: (answers.append(payload), real_respond(msg, payload))
    tiny.drain("0")
    tiny.drain("0")          # already down: nothing new to say
    tiny.undrain("0", at=EPOCH + 5)
    tiny.run(until=EPOCH + 10)
    assert answers == [{"down": "0"}, {"up": "0"}]


def test_simulate_reads_drains_and_per_scheduler_arguments_from_its_command_line():
    from flux.schedsim._cli import RankEvent, _rank_event, scheduler_and_args

    assert _rank_event("2-3@3600-7200") == RankEvent("2-3", 3600.0, 7200.0, "2-3@3600-7200")
    assert _rank_event("1,0@0") == RankEvent("0-1", 0.0, None, "1,0@0")
    for bad in ("2-3", "x@5", "1@-5", "1@5-2", "1@nan", "1@5-inf"):
        with pytest.raises(Exception, match="expected RANKS@START"):
            _rank_event(bad)
    assert scheduler_and_args("sched-fifo:queue-depth=8,x", ["a"]) == ("sched-fifo", ["a", "queue-depth=8", "x"])
    assert scheduler_and_args("sched-backfill", ["a"]) == ("sched-backfill", ["a"])


@pytest.mark.parametrize("flag, path, why", [
    ("--plot", "out.gif", "argument --plot: 'out.gif': name a .png, .svg, .pdf file"),
    ("--output", "out.txt", "argument --output: 'out.txt': name a .csv, .json, .jsonl file"),
    ("--drain", "1@5-2", "argument --drain: '1@5-2': expected RANKS@START[-END] with 0 <= START < END"),
])
def test_simulate_refuses_a_bad_output_plot_or_drain_as_a_bad_command_line(capsys, flag, path, why):
    from flux._brokermod_cli import main

    with pytest.raises(SystemExit) as info:
        main(["simulate", "--swf", "x.swf", "--cores", "4", flag, path, "sched-fifo"])
    assert info.value.code == 2 and why in capsys.readouterr().err


def test_outcomes_handed_back_by_flux_cores_python_are_plotted_here(tmp_path, monkeypatch):
    """The re-run under flux-core's Python writes its outcomes to a file and
    this process, which has matplotlib, reads them back and plots."""
    import json
    import types

    from flux.schedsim import Outcome
    from flux.schedsim._cli import OUTCOMES_ENV, _load_outcomes, _plot, _write
    from flux.schedsim._results import job_result

    job = types.SimpleNamespace(id=1, userid=5, state="complete", t_submit=EPOCH, t_alloc=EPOCH + 3,
                                t_end=EPOCH + 60, R={"execution": {"R_lite": [{"rank": "0", "children": {"core": "0-1"}}]}})
    sent = {"sched-fifo": Outcome((job_result(job, EPOCH),), 4, 60.0)}
    handback = tmp_path / "outcomes.json"
    options = types.SimpleNamespace(output=None, plot=str(tmp_path / "p.svg"), swf="t.swf", nodes=1, cores=4)
    monkeypatch.setenv(OUTCOMES_ENV, str(handback))
    assert _write(options, sent, io.StringIO()) == 0  # in the re-run: handed back, not plotted
    assert not (tmp_path / "p.svg").exists() and json.loads(handback.read_text())
    assert _load_outcomes(str(handback)) == sent
    assert _plot(options, sent, io.StringIO()) == 0
    assert "sched-fifo" in (tmp_path / "p.svg").read_text()


def test_the_progress_bar_redraws_one_line_at_most_five_times_a_second_and_clears_it(monkeypatch):
    from flux.schedsim import _cli

    clock = iter([10.0, 10.1, 10.3, 10.35])
    monkeypatch.setattr(_cli.time, "monotonic", lambda: next(clock))
    err = io.StringIO()
    bar = _cli._Progress("sched-fifo", 10, err)
    bar(4, 0)
    bar(6, 2)    # 0.1 s later: not redrawn
    bar(10, 5)
    bar.done()
    assert err.getvalue() == ("\rsched-fifo [" + "." * 30 + "] 0/10 jobs ended, 4 submitted"
                              "\rsched-fifo [" + "#" * 15 + "." * 15 + "] 5/10 jobs ended, 10 submitted"
                              "\r\033[K")


def test_replay_reports_progress_to_the_callable_it_is_given(tiny):
    """replay() reports progress to the callable it is given (the CLI's bar on a terminal only)."""
    seen = []
    tiny.replay(read_swf(io.StringIO("1 0 -1 60 1 -1 -1 1 60 -1 1 1 1 -1 1 -1 -1 -1\n"
                                     "2 5 -1 60 1 -1 -1 1 60 -1 1 1 1 -1 1 -1 -1 -1\n")),
                progress=lambda submitted, ended: seen.append((submitted, ended)))
    assert seen[0] == (1, 0) and seen[-1] == (2, 2)


# The tiny scheduler, but, as flux.scheduler does, a free only arms a pass
# (a timer of 0 s) and it logs what it saw.
DEFERRING_SCHEDULER = TINY_SCHEDULER.replace("class tinysched(", "class defersched(").replace(
    '''        self.free_cores = sorted(self.free_cores + [int(c) for c in cores.split(",")])
        self.schedule()''',
    '''        self.free_cores = sorted(self.free_cores + [int(c) for c in cores.split(",")])
        self.seen.append(f"free {msg.payload['id']}")
        self.handle.timer_watcher_create(0, lambda *a: (self.seen.append("pass"), self.schedule())).start()''',
).replace("        self.requests = {}\n", "        self.requests = {}\n        self.seen = []\n", 1)


def test_jobs_ending_at_one_instant_are_freed_one_at_a_time_each_followed_by_a_pass(write, flux_sched_simulation):
    assert "self.seen.append(\"pass\")" in DEFERRING_SCHEDULER
    sim = flux_sched_simulation(write("defersched.py", DEFERRING_SCHEDULER), nodes=1, cores=4)
    first, second = sim.submit(ncores=2, runtime=10), sim.submit(ncores=2, runtime=10)
    waiting = sim.submit(ncores=2, runtime=5)
    sim.run()
    assert sim.scheduler.instance.seen == ["free 1", "pass", "free 2", "pass", "free 3", "pass"]  # not free 1, 2, pass
    assert sim.jobs[waiting].t_alloc == EPOCH + 10
    assert [sim.jobs[j].t_end for j in (first, second)] == [EPOCH + 10] * 2  # both at the same instant
    assert sim.jobs[waiting].R["execution"]["R_lite"][0]["children"]["core"] == "0,1"  # the first freed


def test_a_job_whose_rank_fails_at_the_instant_it_ends_is_freed_once(write, flux_sched_simulation):
    sim = flux_sched_simulation(write("defersched2.py", DEFERRING_SCHEDULER), nodes=1, cores=4)
    job = sim.submit(ncores=2, runtime=40)
    sim.fail("0", at=EPOCH + 40)
    sim.run()
    assert sim.jobs[job].state == "failed"  # the failure came first; its end found it over
    assert sim.scheduler.instance.seen == ["free 1", "pass"]
    assert sim.broker.modules["job-manager"].instance.ended == 1
