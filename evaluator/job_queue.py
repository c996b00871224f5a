"""The `queue:DIR` executor's directory, and the worker that answers it (`forge worker`).

Layout of DIR (every file is written under `tmp/` and renamed into place, so nobody reads a
partial one; a rename within one filesystem is atomic, on NFS too):

    pending/<id>.json           jobs waiting for a worker (QueueJob); <id> starts with the device
    claimed/<worker>/<id>.json  jobs a worker holds: it took them by renaming them out of
                                pending/, which succeeds for exactly one worker
    claimed/<worker>/heartbeat  touched every few seconds while the worker lives
    results/<id>.json           answers (QueueResult); the controller deletes one once read

A worker whose heartbeat is older than the stale limit is dead: whoever sees it (a worker or a
controller) moves its jobs back to pending/. A worker writes a result only while it still holds
the job, and the controller forgets a job once answered (a late duplicate is deleted unread), so
a result is never applied twice. Clocks of the hosts sharing DIR must roughly agree (NTP): the
heartbeat's age is the file's modification time against the reader's clock.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from forge.evaluator.config import EvalConfig
from forge.evaluator.host import EvaluatorError
from forge.evaluator.problem import Problem, ProblemError
from forge.evaluator.result import EvalResult


def process_identity(pid: int | None = None) -> str:
    """`host/pid namespace/pid/start time` of a process (this one by default), or "" where
    /proc cannot tell (not Linux): with the namespace and the start time, neither a container
    with the same host name nor a reused pid passes for the process."""
    pid = os.getpid() if pid is None else pid
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        start = _start_time(pid)
    except OSError:
        return ""
    return f"{socket.gethostname()}/{namespace}/{pid}/{start}"


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]  # field 22: start time, clock ticks


def process_gone(identity: str) -> bool:
    """Whether the process `identity` names ran here (this host, this pid namespace) and has
    exited; False for a process elsewhere, which cannot be told from here, and for an identity
    not in `process_identity`'s form."""
    parts = identity.rsplit("/", 3)
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    _, namespace, pid, start = parts
    try:
        if os.readlink("/proc/self/ns/pid") != namespace:
            return False
        return _start_time(int(pid)) != start
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


STALE_S = 30.0
"""A worker whose heartbeat is older than this is taken for dead and its jobs are retried."""
HEARTBEAT = "heartbeat"


class QueueJob(BaseModel):
    """One evaluation waiting in (or taken from) a queue directory."""

    id: str
    """`<device>-<submission time, ns>-<random>`: workers pick jobs of their device, oldest first."""
    problem: Problem
    """The problem, as the controller resolved it (the worker needs no catalogue or file)."""
    source: str
    """The candidate's source."""
    config: EvalConfig
    """How to evaluate it; the worker uses its own compiler cache."""
    submitted_by: str = ""
    """`host:pid` of the controller, for the worker's log."""
    owner: str = ""
    """The controller process (`process_identity`): a job whose controller has exited is
    withdrawn by the next controller on its host (`Queue.withdraw_orphans`)."""

    @classmethod
    def create(cls, problem: Problem, source: str, config: EvalConfig) -> QueueJob:
        job_id = f"{config.device}-{time.time_ns():020d}-{secrets.token_hex(4)}"
        return cls(
            id=job_id,
            problem=problem,
            source=source,
            config=config.model_copy(update={"executor": "local"}),
            submitted_by=f"{socket.gethostname()}:{os.getpid()}",
            owner=process_identity(),
        )

    def answer(
        self,
        worker: str,
        evaluate: Callable[[Problem, str, EvalConfig], EvalResult],
        cache_dir: Path,
    ) -> QueueResult:
        """The job's verdict from `evaluate` with this host's compiler cache, or why there is none
        (no GPU here, a problem that does not load ...)."""
        config = self.config.model_copy(update={"cache_dir": cache_dir})
        try:
            result = evaluate(self.problem, self.source, config)
        except (EvaluatorError, ProblemError) as exc:
            return QueueResult(id=self.id, worker=worker, owner=self.owner, error=str(exc))
        return QueueResult(id=self.id, worker=worker, owner=self.owner, result=result)


class QueueResult(BaseModel):
    """A worker's answer to one job."""

    id: str
    """The job's id."""
    worker: str
    """The worker that answered."""
    result: EvalResult | None = None
    """The verdict; None when the evaluation could not be run (see `error`)."""
    error: str = ""
    """Why there is no verdict (no GPU on the worker, an unreadable job ...)."""
    owner: str = ""
    """The job's controller (`QueueJob.owner`)."""

    def to_json(self) -> str:
        """JSON that round-trips infinities (an error can be inf), as the database stores it."""
        return json.dumps(self.model_dump(mode="python"), allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> QueueResult:
        return cls.model_validate(json.loads(text))


class Queue:
    """A queue directory (created if missing)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("tmp", "pending", "claimed", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, text: str) -> None:
        tmp = self.root / "tmp" / f"{path.name}.{secrets.token_hex(6)}"
        tmp.write_text(text)
        os.rename(tmp, path)

    # the controller's side

    def submit(self, job: QueueJob) -> None:
        self._write(self.root / "pending" / f"{job.id}.json", job.model_dump_json())

    def where(self, job_id: str) -> str | None:
        """`pending`, the id of the worker holding the job, or None (answered or gone)."""
        name = f"{job_id}.json"
        if (self.root / "pending" / name).exists():
            return "pending"
        for worker in self._workers():
            if (worker / name).exists():
                return worker.name
        return None

    def take_result(self, job_id: str) -> QueueResult | None:
        """The job's result, removed from the directory; None while there is none."""
        path = self.root / "results" / f"{job_id}.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        try:
            return QueueResult.from_json(text)
        except ValueError as exc:  # not JSON, or not a result
            first = str(exc).splitlines()[0]
            raise EvaluatorError(f"unreadable result file {path}: {first}") from exc

    def forget(self, job_id: str) -> None:
        """Remove every trace of the job that is not held by a worker: a copy put back in the
        queue, a result. A worker holding it discards its result when it finds it gone."""
        name = f"{job_id}.json"
        (self.root / "pending" / name).unlink(missing_ok=True)
        (self.root / "results" / name).unlink(missing_ok=True)
        for worker in self._workers():
            (worker / name).unlink(missing_ok=True)

    def withdraw_orphans(self) -> list[str]:
        """Remove the jobs and results of controllers of this host that have exited (killed, or
        stopped mid-batch): pending, held by a worker (which then discards its result) or
        answered. A resumed batch submits its unevaluated candidates again, so these would be
        evaluated for nobody. Returns the ids removed."""
        places = [self.root / "pending", self.root / "results", *self._workers()]
        removed = []
        for path in (p for place in places for p in place.glob("*.json")):
            try:
                owner = json.loads(path.read_text()).get("owner", "")
            except (OSError, ValueError):  # taken meanwhile, or being written
                continue
            if owner and process_gone(owner):
                path.unlink(missing_ok=True)
                removed.append(path.stem)
        return removed

    def drop_results(self, consumed: Iterable[str]) -> None:
        """Delete late duplicate results of jobs already answered."""
        done = {f"{job_id}.json" for job_id in consumed}
        for name in set(os.listdir(self.root / "results")) & done:
            (self.root / "results" / name).unlink(missing_ok=True)

    # shared

    def _workers(self) -> list[Path]:
        return [p for p in (self.root / "claimed").iterdir() if p.is_dir()]

    def requeue_stale(self, stale_s: float) -> list[tuple[str, str]]:
        """Put the jobs of dead workers (heartbeat older than `stale_s`) back in the queue;
        returns (job id, worker) for each job moved."""
        moved = []
        now = time.time()
        for worker in self._workers():
            beat = worker / HEARTBEAT
            try:
                last = beat.stat().st_mtime
            except FileNotFoundError:  # starting, or being removed
                try:
                    last = worker.stat().st_mtime
                except FileNotFoundError:
                    continue
            if now - last <= stale_s:
                continue
            for job in worker.glob("*.json"):
                try:
                    os.rename(job, self.root / "pending" / job.name)
                except FileNotFoundError:  # another process moved it first
                    continue
                moved.append((job.stem, worker.name))
            beat.unlink(missing_ok=True)
            try:
                worker.rmdir()
            except OSError:  # not empty or gone: left to the next look
                pass
        return moved

    # the worker's side

    def register(self, worker_id: str) -> Path:
        claims = self.root / "claimed" / worker_id
        claims.mkdir(parents=True, exist_ok=True)
        (claims / HEARTBEAT).touch()
        return claims

    def pending(self, device: str) -> list[str]:
        """The file names of the jobs of `device` waiting for a worker, oldest first."""
        names = os.listdir(self.root / "pending")
        return sorted(n for n in names if n.startswith(f"{device}-") and n.endswith(".json"))

    def claim(self, worker_id: str, device: str) -> Path | None:
        """Take the oldest pending job of `device`; None when there is none."""
        claims = self.register(worker_id)
        for name in self.pending(device):
            try:
                os.rename(self.root / "pending" / name, claims / name)
            except FileNotFoundError:  # another worker took it
                continue
            return claims / name
        return None

    def answer(self, claim: Path, answer: QueueResult) -> bool:
        """Write the result if the job is still ours (not put back, not withdrawn), then let
        go of it; False when the result was discarded."""
        if not claim.exists():
            return False
        self._write(self.root / "results" / claim.name, answer.to_json())
        claim.unlink(missing_ok=True)
        return True

    def release(self, claim: Path) -> None:
        """Put a job back in the queue, unanswered (the worker is stopping)."""
        try:
            os.rename(claim, self.root / "pending" / claim.name)
        except FileNotFoundError:
            pass

    def unregister(self, worker_id: str) -> None:
        claims = self.root / "claimed" / worker_id
        (claims / HEARTBEAT).unlink(missing_ok=True)
        try:
            claims.rmdir()
        except OSError:  # gone, or a job still in it (left for requeue_stale)
            pass


POLL_S = 0.05
"""How often an idle worker looks for a pending job."""


class Worker:
    """Takes jobs of one device from a queue directory and evaluates them here, one at a time,
    heartbeating its claim; `log` hears one line per job (and per dead worker's job put back).

    Resident: what does not change between jobs stays up. The sandbox process of the next job,
    with its runner, is started when the worker starts and again as a GPU job starts while
    another job of its device is pending (else, and for a CPU job, as the job ends), its
    start-up kept out of the job's timing by the device lock (`forge.sandbox.gpu_lock`). Each
    job still gets a fresh process and runner: candidate code never runs in a reused one.
    Compiler caches and cached torch.compile baselines live in this host's cache directory."""

    def __init__(
        self,
        root: Path,
        device: str,
        stale_s: float = STALE_S,
        poll_s: float = POLL_S,
        log: Callable[[str], None] = print,
    ):
        from forge.evaluator.executors import LocalExecutor

        self.queue = Queue(root)
        self.device = device
        self.stale_s = stale_s
        self.poll_s = poll_s
        self.log = log
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.config = EvalConfig(device=device)
        self.executor = LocalExecutor(self.config, more_jobs=self._pending)
        self.claim: Path | None = None
        self._stop = threading.Event()

    def _pending(self, device: str) -> bool:
        return bool(self.queue.pending(device))

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(2.0, self.stale_s / 4)):
            try:
                os.utime(self.queue.root / "claimed" / self.id / HEARTBEAT)
            except FileNotFoundError:  # taken for dead meanwhile: be seen alive again
                self.queue.register(self.id)

    def run(self, drain: bool) -> int:
        """Serve until interrupted, or with `drain` until no job of this device is pending;
        returns the number of jobs answered."""
        self.queue.register(self.id)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        done = 0
        try:
            self.executor.start_ahead(self.device)
            while True:
                for job_id, worker in self.queue.requeue_stale(self.stale_s):
                    self.log(f"{job_id}: put back in the queue (worker {worker} stopped answering)")
                self.claim = self.queue.claim(self.id, self.device)
                if self.claim is None:
                    if drain:
                        return done
                    time.sleep(self.poll_s)
                    continue
                self._process(self.claim)
                self.claim = None
                done += 1
        finally:
            self._stop.set()
            if self.claim is not None:  # interrupted mid-job: another worker will do it
                self.queue.release(self.claim)
            self.queue.unregister(self.id)
            self.executor.close()

    def _process(self, claim: Path) -> None:
        started = time.monotonic()
        job_id, label = claim.stem, claim.stem
        try:
            job = QueueJob.model_validate_json(claim.read_text())
        except (ValidationError, OSError) as exc:
            answer = QueueResult(id=job_id, worker=self.id, error=f"unreadable job file: {exc}")
        else:
            label = f"{job_id} {job.problem.name} from {job.submitted_by}"
            answer = job.answer(self.id, self.executor.evaluate, self.config.cache_dir)
        verdict = answer.result.status.value if answer.result else f"error: {answer.error}"
        kept = self.queue.answer(claim, answer)
        note = "" if kept else " (discarded: the job was withdrawn or given to another worker)"
        self.log(f"{label}: {verdict} in {time.monotonic() - started:.1f} s{note}")
