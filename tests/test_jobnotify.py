"""examples/jobnotify.py: each user follows their own jobs' events.

On a real instance it reads flux-core's job manager and follows a job
submitted with ``flux submit``; in memory a stand-in job manager serves
the same journal.
"""

import errno
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTIFY = os.path.join(ROOT, "examples", "jobnotify.py")
EVENTS = ["submit", "validate", "depend", "priority", "alloc", "start", "finish", "release", "free", "clean"]

# A stand-in for flux-core's job manager: its events journal (one response
# per job event, as flux-core 0.88 sends them), and a way to run a job.
FAKE_JOB_MANAGER = r"""
import asyncio
from flux.brokermod import BrokerModule, request_handler

EVENTS = %r


class JobManager(BrokerModule):
    def setup(self):
        self.journals = []
        self.past = []
        self.next_id = 1000

    @request_handler("events-journal")
    async def journal(self, msg, *, full: bool = False):
        queue = asyncio.Queue()
        self.journals.append(queue)
        if full:  # the events of every job so far, one job per response
            jobs = {}
            for job, entry in self.past:
                jobs.setdefault(job, []).append(entry)
            for job, entries in jobs.items():
                yield {"id": job, "events": entries}
        while True:
            yield await queue.get()

    @request_handler("run", allow_guest=True)
    async def run_job(self, msg):
        self.next_id += 1
        for name in EVENTS:
            entry = {"timestamp": 0.0, "name": name}
            if name == "submit":
                entry["context"] = {"userid": msg.userid}
            self.past.append((self.next_id, entry))
            for queue in self.journals:
                queue.put_nowait({"id": self.next_id, "events": [entry]})
            await asyncio.sleep(0.01)
        return {"id": self.next_id}
""" % (EVENTS,)


@pytest.fixture
def notify(target, tmp_path):
    if target.real:
        job = target.instance.flux("submit", "--wait-event=clean", "hostname")
        assert job.returncode == 0, job.stderr
        decimal = target.instance.flux("job", "id", "--to=dec", job.stdout.strip())
        target.job = int(decimal.stdout.strip())
        target.load(NOTIFY)  # loaded after the job: the journal replays it
    else:
        path = tmp_path / "job-manager.py"
        path.write_text(textwrap.dedent(FAKE_JOB_MANAGER))
        target.load(str(path), name="job-manager")
        target.job = target.rpc("job-manager.run").get()["id"]
        target.load(NOTIFY)  # loaded after the job: the journal replays it
    yield target
    target.remove("jobnotify")
    if not target.real:
        target.remove("job-manager")


def _follow(target, guest=False):
    def done():
        return target.rpc("jobnotify.follow", {"id": target.job}, streaming=True, guest=guest)

    result = done()
    if result.answers[-1].get("errno") == errno.ENOENT:  # the journal has not reached it yet
        target.settle(lambda: target.rpc("jobnotify.follow", {"id": target.job}, streaming=True)
                      .answers[-1].get("errno") != errno.ENOENT, "the job in the journal")
        result = done()
    return result


def test_the_owner_follows_a_job_to_its_end(notify):
    result = _follow(notify)
    assert [event["event"] for event in result.stream()] == EVENTS
    assert {event["id"] for event in result.stream()} == {notify.job}
    assert result.answers[-1]["errno"] == errno.ENODATA


def test_a_guest_cannot_follow_another_users_job(notify):
    _follow(notify)  # the job is known by now
    result = notify.rpc("jobnotify.follow", {"id": notify.job}, streaming=True, guest=True)
    assert result.answers == [{"errno": errno.EPERM, "error": f"job {notify.job} belongs to another user"}]


def test_an_unknown_job_is_refused(notify):
    result = notify.rpc("jobnotify.follow", {"id": 12345}, streaming=True)
    assert result.answers == [{"errno": errno.ENOENT, "error": "unknown job 12345"}]
