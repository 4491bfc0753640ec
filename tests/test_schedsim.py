"""flux-core's schedulers, unchanged, in the in-memory broker on virtual time.

These need flux-core's Python bindings in this process (``flux env python3
-m pytest``); ``test_schedsim_under_flux.py`` runs this file so whenever
``flux`` is on PATH.
"""

import os

import pytest

try:
    import _flux._core  # noqa: F401
    import flux.scheduler  # noqa: F401
except ImportError:
    pytest.skip("needs flux-core 0.88+'s Python bindings in this process (`flux env python3 -m pytest` from a "
                "virtualenv with cffi, pyyaml and ply); test_schedsim_under_flux.py runs it so when flux is on PATH",
                allow_module_level=True)

from flux.schedsim import EPOCH, Simulation, read_swf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TRACE = os.path.join(HERE, "data", "tiny.swf")


def lite(job):
    return job.R["execution"]["R_lite"]


def test_a_kvs_commit_continuation_and_a_synchronous_lookup_run_through_libflux(tmp_path):
    from flux.membroker import Broker
    from flux.schedsim._services import KVS

    module = tmp_path / "user.py"
    module.write_text(
        "import flux.kvs\n"
        "from flux.brokermod import BrokerModule, request_handler\n"
        "class user(BrokerModule):\n"
        "    @request_handler('put')\n"
        "    def put(self, msg):\n"
        "        txn = flux.kvs.KVSTxn(self.handle)\n"
        "        txn.put('a.b', {'x': 1})\n"
        "        flux.kvs.commit_async(self.handle, _kvstxn=txn).then(self.done, msg)\n"
        "    def done(self, future, msg):\n"
        "        future.get()\n"
        "        self.handle.respond(msg, {'now': flux.kvs.get(self.handle, 'a.b')})\n"
    )
    broker = Broker()
    try:
        broker.load(KVS, name="kvs")
        broker.load(str(module))
        assert broker.rpc("user.put").get() == {"now": {"x": 1}}
        assert broker.now == 0.0  # the continuation ran without the clock moving
    finally:
        broker.close()


def test_sched_fifo_runs_jobs_in_strict_fifo_order_on_virtual_time():
    with Simulation("sched-fifo", nodes=4, cores=8) as sim:
        big = sim.submit(nnodes=2, ncores=8, runtime=600)
        whole = sim.submit(nnodes=4, ncores=8, runtime=60)
        small = sim.submit(nnodes=1, ncores=8, runtime=30)
        sim.run()
        jobs = sim.jobs
        assert sim.allocations == [big, whole, small]
        assert jobs[big].t_alloc == EPOCH
        assert jobs[whole].t_alloc == EPOCH + 600  # waited for the first to end
        assert jobs[small].t_alloc == EPOCH + 660  # strict FIFO: no backfill past the whole-machine job
        assert lite(jobs[whole]) == [{"rank": "0-3", "children": {"core": "0-7"}}]
        # R is stamped with the virtual clock (flux_reactor_now) and the job's time limit
        execution = jobs[whole].R["execution"]
        assert (execution["starttime"], execution["expiration"]) == (EPOCH + 600, EPOCH + 660)
        assert jobs[whole].annotations == {"sched": {"resource_summary": "rank[0-3]/core[0-7]"}}
        assert sim.summary()["utilisation"] == pytest.approx((2 * 8 * 600 + 4 * 8 * 60 + 8 * 30) / (32 * 690))


def test_the_same_jobs_give_the_same_allocations_every_run():
    def run():
        with Simulation("sched-fifo", "queue-depth=unlimited", nodes=8, cores=4) as sim:
            for i in range(60):
                sim.submit(nnodes=1 + i % 3, ncores=1 + i % 4, runtime=10 + (i * 37) % 300, at=EPOCH + i)
            sim.run()
            return sim.allocations, [(j.t_alloc, lite(j)) for j in sim.jobs.values()]

    first = run()
    assert len(first[0]) == 60
    assert run() == first


def test_a_pending_job_canceled_leaves_the_queue_and_the_next_one_runs():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        running = sim.submit(nnodes=2, ncores=4, runtime=100)
        doomed = sim.submit(nnodes=2, ncores=4, runtime=100)
        after = sim.submit(nnodes=1, ncores=4, runtime=10)
        sim.run(until=EPOCH + 50)
        assert sim.jobs[doomed].state == "pending"
        sim.cancel(doomed)
        sim.run()
        assert sim.jobs[doomed].state == "canceled"
        assert sim.jobs[doomed].t_end == EPOCH + 50
        assert sim.jobs[after].t_alloc == EPOCH + 100
        assert sim.allocations == [running, after]


def test_a_job_no_instance_could_hold_is_denied_with_the_schedulers_reason():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        job = sim.submit(nnodes=3, ncores=4, runtime=10)
        sim.run()
        assert sim.jobs[job].state == "denied"
        assert "node" in sim.jobs[job].note


def test_limited_mode_keeps_at_most_the_queue_depth_of_alloc_requests_outstanding():
    with Simulation("sched-fifo", "queue-depth=3", nodes=1, cores=1) as sim:
        for _ in range(10):
            sim.submit(ncores=1, runtime=5)
        assert sim._jm.limit == 3
        assert sim._jm.outstanding == 3
        sim.run()
        assert sim.allocations == list(range(1, 11))
        assert sim.jobs[10].t_alloc == EPOCH + 45


def test_sched_backfill_starts_a_short_job_ahead_of_a_blocked_one(flux_sched_simulation):
    sim = flux_sched_simulation("sched-backfill", nodes=4, cores=4)
    sim.submit(nnodes=3, ncores=4, runtime=1000)
    blocked = sim.submit(nnodes=4, ncores=4, runtime=100)
    short = sim.submit(nnodes=1, ncores=4, runtime=50)
    sim.run()
    assert sim.jobs[short].t_alloc == EPOCH  # fits the hole and ends before the blocked job could start
    assert sim.jobs[blocked].t_alloc == EPOCH + 1000


def test_an_swf_trace_replays_under_two_policies_and_backfill_waits_less():
    trace = list(read_swf(TRACE))
    assert len(trace) == 9  # job 7 never ran
    figures = {}
    for policy in ("sched-fifo", "sched-backfill"):
        with Simulation(policy, "queue-depth=unlimited", nodes=4, cores=32) as sim:
            sim.replay(trace)
            figures[policy] = sim.summary()
            assert figures[policy]["started"] == 9
    assert figures["sched-backfill"]["mean_wait"] < figures["sched-fifo"]["mean_wait"]
    assert 0 < figures["sched-fifo"]["utilisation"] <= 1


def test_simulate_prints_each_policys_figures_for_a_trace(capsys):
    from flux._brokermod_cli import main

    assert main(["simulate", "--swf", TRACE, "--nodes", "4", "--cores", "32",
                 "--sched-arg", "queue-depth=unlimited", "sched-fifo", "sched-backfill"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"9 jobs of {TRACE} on 4 nodes x 32 cores"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"sched-fifo", "sched-backfill"}
    assert float(rows["sched-backfill"][2]) < float(rows["sched-fifo"][2])  # mean wait


def test_simulate_names_a_bad_trace_line(tmp_path, capsys):
    from flux._brokermod_cli import main

    bad = tmp_path / "bad.swf"
    bad.write_text("1 0 -1 60\n")
    assert main(["simulate", "--swf", str(bad), "--cores", "4", "sched-fifo"]) == 1
    assert capsys.readouterr().err.strip() == f"flux-brokermod: simulate: {bad}: line 1: 4 fields, an SWF job line has 18"


# Cores and run time (seconds) of each job: distinct end times, so that the
# order of events does not depend on a real instance's overheads.
DIFFERENTIAL_JOBS = [(4, 2), (8, 4), (16, 1), (2, 3), (6, 2), (4, 5), (12, 1), (2, 2)]

INSIDE = """set -e
flux module remove sched-simple
flux module load sched-fifo queue-depth=unlimited
flux queue stop
for spec in {specs}; do
  set -- $spec
  flux submit -n $1 -t 100s --setattr=system.exec.test.run_duration=${{2}}s true
done > ids
flux queue start
flux queue drain
for id in $(cat ids); do
  printf '{{"alloc": %s, "R": %s, "jobspec": %s}}\\n' \\
    "$(flux job eventlog $id | awk '$2=="alloc"{{print $1}}')" "$(flux job info $id R)" "$(flux job info $id jobspec)"
done
"""


def test_sched_fifo_allocates_as_on_a_real_instance_with_simulated_execution(tmp_path):
    """The differential test: the same jobs, through the same sched-fifo, on
    ``flux start --test-size=1`` (simulated execution) and in memory."""
    import json
    import socket
    import subprocess

    from flux.brokermod_testing import find_flux

    flux = find_flux()
    if flux is None:
        pytest.skip("no real Flux: flux-core not found on PATH (or $FLUX_BROKERMOD_FLUX)")
    R = subprocess.run([flux, "R", "encode", "-r", "0", "-c", "0-15", "-H", socket.gethostname()],
                       capture_output=True, text=True, check=True).stdout
    (tmp_path / "R.json").write_text(R)
    (tmp_path / "conf.toml").write_text(f'[resource]\nnoverify = true\npath = "{tmp_path / "R.json"}"\n')
    specs = " ".join(f'"{cores} {seconds}"' for cores, seconds in DIFFERENTIAL_JOBS)
    (tmp_path / "inside.sh").write_text(INSIDE.format(specs=specs))
    run = subprocess.run([flux, "start", "--test-size=1", f"--config-path={tmp_path / 'conf.toml'}",
                          "bash", str(tmp_path / "inside.sh")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    real = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(real) == len(DIFFERENTIAL_JOBS)

    with Simulation("sched-fifo", "queue-depth=unlimited", nodes=1, cores=16) as sim:
        ids = [sim.submit(spec=job["jobspec"], runtime=seconds)
               for job, (_, seconds) in zip(real, DIFFERENTIAL_JOBS)]
        sim.run()
        memory = [sim.jobs[i] for i in ids]

    def order(times):
        return sorted(range(len(times)), key=lambda i: (times[i], i))

    t0 = min(job["alloc"] for job in real)
    real_times = [round(job["alloc"] - t0) for job in real]  # seconds; a real instance adds milliseconds
    memory_times = [job.t_alloc - memory[0].t_alloc for job in memory]
    assert real_times == memory_times
    assert order([job["alloc"] for job in real]) == order([job.t_alloc for job in memory])
    for real_job, memory_job in zip(real, memory):
        assert memory_job.R["execution"]["R_lite"] == real_job["R"]["execution"]["R_lite"]
        assert memory_job.R["execution"].get("nslots") == real_job["R"]["execution"].get("nslots")
        duration = real_job["R"]["execution"]["expiration"] - real_job["R"]["execution"]["starttime"]
        execution = memory_job.R["execution"]
        assert execution["expiration"] - execution["starttime"] == pytest.approx(duration)


def test_a_reloaded_scheduler_takes_running_jobs_back_from_the_kvs_through_hello(flux_sched_simulation):
    sim = flux_sched_simulation("sched-fifo", nodes=4, cores=4)
    running = sim.submit(nnodes=2, ncores=4, runtime=600)
    sim.run(until=EPOCH + 100)
    sim.reload_scheduler("queue-depth=unlimited")
    later = sim.submit(nnodes=2, ncores=4, runtime=10)
    sim.run()
    assert lite(sim.jobs[running]) == [{"rank": "0-1", "children": {"core": "0-3"}}]
    # the new scheduler knew ranks 0-1 were taken: it looked R up with flux.kvs.get (a synchronous libflux get)
    assert lite(sim.jobs[later]) == [{"rank": "2-3", "children": {"core": "0-3"}}]
    assert sim.jobs[later].t_alloc == EPOCH + 100
    assert sim.jobs[running].t_end == EPOCH + 600


def test_a_schedulers_flux_respond_error_through_libflux_answers_the_caller(flux_sched_simulation):
    """Scheduler answers some errors with lib.flux_respond_error(h.handle, msg.handle, ...)."""
    import errno

    sim = flux_sched_simulation("sched-fifo", nodes=1, cores=1)
    with pytest.raises(OSError) as info:
        sim.broker.rpc("sched.expiration", {"id": 1, "expiration": -1}).get()
    assert (info.value.errno, info.value.strerror) == (errno.EINVAL, "invalid expiration -1")
    assert sim.broker.rpc("sched.expiration", {"id": 1, "expiration": 5}).get() is None


def test_flux_cores_own_message_sent_in_memory_keeps_its_topic_payload_and_matchtag(tmp_path):
    from _flux._core import lib
    from flux.membroker import Broker
    from flux.message import Message as CoreMessage

    module = tmp_path / "echo.py"
    module.write_text(
        "from flux.brokermod import BrokerModule, request_handler\n"
        "class echo(BrokerModule):\n"
        "    @request_handler('back')\n"
        "    def back(self, msg):\n"
        "        return {'got': msg.payload}\n"
    )
    broker = Broker()
    try:
        broker.load(str(module))
        client = broker.connect()
        answers = []
        client.msg_watcher_create(lambda h, w, msg, arg: answers.append(msg.payload),
                                  topic_glob="echo.back", type_mask=2).start()
        request = CoreMessage()
        request.topic = "echo.back"
        request.payload = {"x": [1, "\u00e9"]}
        lib.flux_msg_set_matchtag(request.handle, 0)
        client.send(request)
        broker.run_until_idle()
        assert answers == [{"got": {"x": [1, "\u00e9"]}}]
    finally:
        broker.close()


def test_the_site_scheduler_example_starts_the_shortest_job_first_in_memory(flux_sched_simulation):
    example = os.path.join(os.path.dirname(HERE), "examples", "sched-shortest.py")
    sim = flux_sched_simulation(example, nodes=1, cores=1)
    running = sim.submit(runtime=100)
    long = sim.submit(runtime=50)
    short = sim.submit(runtime=5)
    middle = sim.submit(runtime=20)
    sim.run()
    assert sim.allocations == [running, short, middle, long]
    assert [sim.jobs[j].t_alloc - EPOCH for j in (short, middle, long)] == [100, 105, 125]
    # its time.time() is the virtual clock too: R's start time is when it was allocated
    assert sim.jobs[long].R["execution"]["starttime"] == EPOCH + 125


def test_a_libflux_get_nothing_will_answer_is_reported_not_a_hang(tmp_path):
    from flux.membroker import Broker, ModuleHang

    (tmp_path / "kvs.py").write_text(
        "from flux.brokermod import BrokerModule, request_handler\n"
        "class kvs(BrokerModule):\n"
        "    @request_handler('lookup')\n"
        "    def lookup(self, msg):\n"
        "        pass  # never answers\n"
    )
    (tmp_path / "reader.py").write_text(
        "import flux.kvs\n"
        "from flux.brokermod import BrokerModule, request_handler\n"
        "class reader(BrokerModule):\n"
        "    @request_handler('read')\n"
        "    def read(self, msg):\n"
        "        try:\n"
        "            return {'value': flux.kvs.get(self.handle, 'a')}\n"
        "        except OSError as exc:\n"
        "            return {'errno': exc.errno}\n"
    )
    broker = Broker()
    try:
        broker.load(str(tmp_path / "kvs.py"))
        broker.load(str(tmp_path / "reader.py"))
        with pytest.raises(ModuleHang, match="module reader waited for a response to a libflux request"):
            broker.rpc("reader.read").get()
    finally:
        broker.close()


def test_an_urgent_job_overtakes_a_full_limited_queue_as_on_a_real_instance(flux_sched_simulation):
    """Measured on 0.88.0 (flux start --test-size=1, --urgency=1 then 20): the
    urgent job starts right after the blocker, though 8 alloc requests were out."""
    sim = flux_sched_simulation("sched-simple", nodes=1, cores=2)
    blocker = sim.submit(ncores=2, runtime=3)
    low = [sim.submit(ncores=2, runtime=1, priority=1) for _ in range(10)]
    urgent = sim.submit(ncores=2, runtime=1, priority=20)
    sim.run()
    assert sim.allocations[:3] == [blocker, urgent, low[0]]


def test_two_simulations_in_one_process_each_read_their_own_clock(flux_sched_simulation):
    def workload(sim):
        sim.submit(ncores=4, runtime=100)
        sim.submit(ncores=8, runtime=100)
        sim.submit(ncores=4, runtime=300)
        sim.run()
        return {j.id: j.t_alloc - EPOCH for j in sim.jobs.values()}

    alone = flux_sched_simulation("sched-backfill", nodes=1, cores=8)
    expected = workload(alone)
    assert expected == {1: 0.0, 2: 100.0, 3: 200.0}
    fifo = flux_sched_simulation("sched-fifo", nodes=1, cores=8)
    fifo.submit(ncores=1, runtime=5000)
    fifo.run()
    assert workload(flux_sched_simulation("sched-backfill", nodes=1, cores=8)) == expected


def test_a_simulations_outcome_has_one_result_per_job_and_outlives_it(tmp_path):
    with Simulation("sched-fifo", nodes=4, cores=8) as sim:
        first = sim.submit(nnodes=2, ncores=8, runtime=600)
        whole = sim.submit(nnodes=4, ncores=8, runtime=60)
        small = sim.submit(ncores=1, runtime=5, userid=7)
        sim.run()
        summary = sim.summary()
    outcome = sim.outcome()  # closed: the results are kept
    assert [r.id for r in outcome.results] == [first, whole, small]
    assert [(r.start, r.end, r.nodes, r.cores) for r in outcome.results] == [
        (0, 600, 2, 16), (600, 660, 4, 32), (660, 665, 1, 1)]
    assert outcome.total_cores == 32 and outcome.elapsed == 665
    assert summary == outcome.metrics()
    assert summary["per_user"][7] == {"jobs": 1, "mean_wait": 660.0, "mean_bounded_slowdown": 66.5}
    outcome.write(str(tmp_path / "jobs.csv"))
    assert (tmp_path / "jobs.csv").read_text().splitlines()[3] == "3,7,complete,0,660,665,660,5,1,1,66.5"


def test_a_drained_rank_gets_no_new_job_and_its_running_job_goes_on_until_undrained():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        running = sim.submit(nnodes=1, ncores=4, runtime=100)
        sim.drain("0-1")
        waiting = sim.submit(nnodes=1, ncores=4, runtime=50)
        sim.undrain("1", at=EPOCH + 30)
        sim.run()
        assert sim.jobs[running].state == "complete" and sim.jobs[running].t_end == EPOCH + 100
        assert sim.jobs[waiting].t_alloc == EPOCH + 30
        assert lite(sim.jobs[waiting]) == [{"rank": "1", "children": {"core": "0-3"}}]


def test_a_failed_rank_ends_its_job_frees_its_R_and_stays_down_until_it_comes_back():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        lost = sim.submit(nnodes=1, ncores=4, runtime=100)   # rank 0
        other = sim.submit(nnodes=1, ncores=4, runtime=80)   # rank 1
        sim.fail("0", at=EPOCH + 40)
        after = sim.submit(nnodes=1, ncores=4, runtime=10)
        sim.undrain("0", at=EPOCH + 60)
        sim.run()
        assert (sim.jobs[lost].state, sim.jobs[lost].t_end) == ("failed", EPOCH + 40)
        assert sim.jobs[lost].note == "node-failure: lost contact with job shell on rank 0"
        assert sim.jobs[other].state == "complete"
        assert sim.jobs[after].t_alloc == EPOCH + 60  # not at 40: rank 0 was down
        assert lite(sim.jobs[after]) == [{"rank": "0", "children": {"core": "0-3"}}]
        assert sim.outcome().results[0].state == "failed"


def test_a_rank_update_names_what_is_wrong():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        with pytest.raises(OSError, match=r"ranks '5': the instance has ranks 0-1"):
            sim.drain("5")
        with pytest.raises(ValueError, match=r"ranks 'x': not an idset"):
            sim.fail("x")
        with pytest.raises(ValueError, match=r"is before the simulation's clock"):
            sim.undrain("0", at=EPOCH - 1)


def test_a_reloaded_scheduler_is_told_which_ranks_are_down():
    with Simulation("sched-fifo", nodes=2, cores=4) as sim:
        sim.drain("0")
        sim.reload_scheduler()
        job = sim.submit(nnodes=1, ncores=4, runtime=5)
        sim.run()
        assert lite(sim.jobs[job]) == [{"rank": "1", "children": {"core": "0-3"}}]


def test_simulate_writes_each_jobs_row_a_plot_and_takes_drains_and_per_scheduler_arguments(tmp_path, capsys):
    from flux._brokermod_cli import main

    rows, picture = tmp_path / "jobs.csv", tmp_path / "jobs.png"
    assert main(["simulate", "--swf", TRACE, "--nodes", "4", "--cores", "32", "--drain", "2-3@0-3600",
                 "--fail", "1@100-200", "--output", str(rows), "--plot", str(picture),
                 "sched-fifo", "sched-backfill:queue-depth=8"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress bar: stderr is not a terminal
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(table) == {"sched-fifo", "sched-backfill:queue-depth=8"}
    jobs = list(__import__("csv").DictReader(rows.open()))
    assert [r["scheduler"] for r in jobs] == ["sched-fifo"] * 9 + ["sched-backfill:queue-depth=8"] * 9
    first = jobs[0]
    assert (first["state"], first["end"], first["nodes"]) == ("failed", "100", "2")  # on ranks 0-1: 2-3 drained
    assert all(r["state"] == "complete" for r in jobs if r["id"] != "1")
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_simulate_gives_one_scheduler_its_own_arguments(capsys):
    from flux._brokermod_cli import main

    assert main(["simulate", "--swf", TRACE, "--nodes", "4", "--cores", "32",
                 "sched-fifo:queue-depth=bogus", "sched-fifo"]) == 1
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["sched-fifo"]
    assert err.startswith("flux-brokermod: simulate: sched-fifo:queue-depth=bogus: ")


def test_flux_cores_scheduler_runs_a_pass_after_each_of_two_frees_at_one_instant():
    with Simulation("sched-simple", nodes=2, cores=4) as sim:
        sim.submit(nnodes=1, ncores=4, runtime=10)
        sim.submit(nnodes=1, ncores=4, runtime=10)
        waiting = [sim.submit(nnodes=1, ncores=4, runtime=5), sim.submit(nnodes=1, ncores=4, runtime=5)]
        scheduler = sim.scheduler.instance
        before = scheduler._sched_passes
        sim.run(until=EPOCH + 10)
        assert scheduler._sched_passes - before == 2  # one after each free, as on an instance, not one for both
        assert [sim.jobs[j].t_alloc for j in waiting] == [EPOCH + 10] * 2
        assert [lite(sim.jobs[j]) for j in waiting] == [[{"rank": "0", "children": {"core": "0-3"}}],
                                                        [{"rank": "1", "children": {"core": "0-3"}}]]


def test_a_replay_hands_jobs_of_one_submit_time_to_the_scheduler_one_at_a_time():
    from flux.schedsim import SWFJob

    with Simulation("sched-simple", nodes=1, cores=4) as sim:
        scheduler = sim.scheduler.instance
        before = scheduler._sched_passes
        sim.replay([SWFJob(1, 0.0, 10.0, 1, 10.0), SWFJob(2, 0.0, 10.0, 1, 10.0)])
        assert scheduler._sched_passes - before == 2  # not one pass for both, as burst() gives
        assert [job.t_alloc for job in sim.jobs.values()] == [EPOCH, EPOCH]
