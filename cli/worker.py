"""`forge worker`: evaluate the jobs that controllers leave in a queue directory (`queue:DIR`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli.errors import err, fail


class Device(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


def worker(
    queue: Annotated[
        Path,
        typer.Option(
            metavar="DIR", help="queue directory shared with the controllers (--executor queue:DIR)"
        ),
    ],
    drain: Annotated[
        bool, typer.Option("--drain", help="evaluate what is pending, then exit")
    ] = False,
    device: Annotated[
        Device, typer.Option(help="the jobs this worker takes: cuda (needs a GPU here) or cpu")
    ] = Device.cuda,
    stale_after: Annotated[
        float,
        typer.Option(
            min=1.0,
            metavar="SECONDS",
            help="a worker silent this long is dead: its jobs go back in the queue",
        ),
    ] = 30.0,
) -> None:
    """Evaluate queued candidates on this machine, one line per job on stderr (Ctrl-C stops;
    a job in flight goes back in the queue). Kept running, it has the next job's sandbox
    process and runner started ahead: `forge eval --executor queue:DIR` skips their start-up."""
    from forge.evaluator.host import EvaluatorError, require_gpu
    from forge.evaluator.job_queue import Worker

    def log(line: str) -> None:
        err.print(escape(line))

    try:
        if device is Device.cuda:
            require_gpu()
        runner = Worker(queue, device.value, stale_s=stale_after, log=log)
    except EvaluatorError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot use queue directory {queue}: {exc}")
    mode = "until the queue is empty" if drain else "until Ctrl-C"
    log(f"worker {runner.id}: {device.value} jobs from {queue.absolute()}, {mode}")
    try:
        done = runner.run(drain)
    except KeyboardInterrupt:
        log(f"worker {runner.id}: stopped")
        raise typer.Exit(130) from None
    except EvaluatorError as exc:
        fail(str(exc))
    log(f"worker {runner.id}: {done} job{'s' if done != 1 else ''} done, queue empty")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
