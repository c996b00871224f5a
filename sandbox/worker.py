"""The sandboxed side of a job: `python -P -m forge.sandbox.worker`.

Reads `{"token", "channel", "writable", "restrict_writes", "restrict_reads", "job"}` as JSON on stdin, restricts
itself, runs the job and writes exactly one framed message to the channel. It leaves with
`os._exit` so that nothing the candidate registered (atexit, finalizers) runs after the result.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # STARTED is taken before any import (E402 ignored for this file)
import os
import socket
import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext

from forge.sandbox import gpu_lock
from forge.sandbox.base import RUNNER_AHEAD, encode_message
from forge.sandbox.policy import default_readable, restrict_filesystem

RUNNERS_READY_S = 120.0
"""The longest a worker started ahead holds the device lock waiting for its runners' start-up;
a runner not ready by then is the job's to wait for (`runner_wait`)."""


def _channel_writer(channel: dict) -> Callable[[bytes], None]:
    if channel["kind"] == "fd":
        fd = channel["fd"]

        def write_fd(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.close(fd)

        return write_fd
    path = channel["path"]

    def write_file(data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    return write_file


def probe(job: dict) -> dict:
    """Facts about the sandbox as seen from inside (used by the sandbox's own tests)."""
    facts: dict = {
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "env": sorted(os.environ),
        "secret_values_seen": [
            v for v in job.get("look_for", []) if v in "".join(os.environ.values())
        ],
        "visible_processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    }
    readable = ""
    for pid in facts["visible_processes"]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                readable += f.read().decode(errors="replace")
        except OSError:
            continue
    facts["secret_values_in_other_processes"] = [
        v for v in job.get("look_for", []) if v in readable
    ]
    try:
        with socket.create_connection(
            (job.get("host", "127.0.0.1"), job.get("port", 9)), timeout=2
        ):
            facts["network"] = "connected"
    except OSError as exc:
        facts["network"] = f"blocked: {exc.__class__.__name__}"
    target = job.get("write_outside")
    if target:
        try:
            with open(target, "w") as f:
                f.write("escaped")
            facts["write_outside"] = "written"
        except OSError as exc:
            facts["write_outside"] = f"blocked: {exc.__class__.__name__}"
    return facts


def run(job: dict) -> dict:
    kind = job["kind"]
    if kind == "probe":
        return probe(job)
    if kind == "evaluate":
        from forge.evaluator.trusted import run_job

        return run_job(job)
    raise ValueError(f"unknown job kind {kind!r}")


def prepare(device: str) -> None:
    """Everything that needs no job, done before the spec arrives so a pre-started worker has it
    behind it: the runner's start (its imports and CUDA start-up run meanwhile), then this
    process's imports and CUDA context. CUDA starts before Landlock: the driver's start-up
    needs writes that Landlock forbids (seen on an H200 host: error 304).

    The device's lock file (`gpu_lock`) is opened here, before Landlock, for the evaluation's
    timed regions. A worker started ahead of its job holds it shared until its runners have
    said they are ready, so its start-up waits for, and is waited for by, a running
    evaluation's timing; one started for its job at once does not wait for its runners here
    (their start-up overlaps the job's setup)."""
    lock = gpu_lock.open_inherited()
    ahead = lock is not None and gpu_lock.started_ahead()
    with lock.shared() if ahead else nullcontext():
        runners = os.environ.get(RUNNER_AHEAD)
        if runners:
            from forge.evaluator import trusted

            trusted.prestart_runner(device)
        if device == "cuda":
            import torch

            from forge.evaluator.compare import warm_up

            torch.cuda.init()
            torch.empty(1, device="cuda").fill_(1)
            warm_up("cuda")
        if runners:
            trusted.mark_worker_ready("own_ready", STARTED)
        if ahead and runners:
            trusted.wait_for_prestarted_runners(RUNNERS_READY_S, STARTED)


def main() -> None:
    prepare(os.environ.get("FORGE_WORKER_DEVICE", "cpu"))
    prepared = time.perf_counter()
    spec = json.loads(sys.stdin.buffer.read())
    write = _channel_writer(spec["channel"])
    token = spec["token"]
    applied = {"filesystem": False, "reads": False, "network": False}
    job = {
        **spec["job"],
        "worker_prepare_s": prepared - STARTED,
        "worker_received": time.perf_counter(),
    }
    if spec.get("restrict_writes", True):
        readable = (
            [*default_readable(), *spec.get("readable", [])]
            if spec.get("restrict_reads", False)
            else None
        )
        applied = restrict_filesystem(spec.get("writable", []), readable)
    del spec
    try:
        payload = run(job)
    except Exception as exc:  # noqa: BLE001 - the worker's last line of defence: any error becomes data
        payload = {
            "worker_error": f"{exc.__class__.__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    payload["sandbox"] = applied
    write(encode_message(token, payload))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
