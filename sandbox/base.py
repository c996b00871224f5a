"""What every sandbox backend implements, and the result channel they share.

A backend starts `python -P -m forge.sandbox.worker` somewhere isolated, writes the job as
JSON on its stdin, and reads the worker's single framed message from a private channel (a
pipe for the local backend, a file in a dedicated mount for docker). The frame carries a
random per-job token that only the host and the worker's harness know, so bytes written by
candidate code (on stdout, or on the channel itself) never parse as a result.
"""

from __future__ import annotations

import json
import os
import re
from typing import Protocol

from pydantic import BaseModel, Field

from forge.evaluator.result import SandboxInfo, truncate

SECRET_NAME = re.compile(
    r"(_KEY|_TOKEN|_SECRET|_PASSWORD|_PASSWD|_CREDENTIALS?|_SESSION)$|^(AWS|AZURE|GOOGLE|GCP|GCLOUD|"
    r"OPENAI|ANTHROPIC|GEMINI|COHERE|MISTRAL|GROQ|TOGETHER|HF|HUGGING|DEEPSEEK|XAI|OPENROUTER)_",
    re.IGNORECASE,
)
KEEP_VARS = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "PYTHONPATH",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "TRITON_PTXAS_PATH",
    "CC",
    "CXX",
    "TORCH_CUDA_ARCH_LIST",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
)


def scrubbed_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Only the variables a kernel build needs, and never anything that looks like a secret."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if k in KEEP_VARS and not SECRET_NAME.search(k)}


class ChannelError(RuntimeError):
    """The result channel held something other than exactly one message with this job's token."""


MAGIC = b"FORGE-RESULT-1"


def encode_message(token: str, payload: dict) -> bytes:
    body = json.dumps(payload, allow_nan=True).encode()
    return MAGIC + b" " + token.encode() + b" " + str(len(body)).encode() + b"\n" + body


def decode_message(token: str, data: bytes) -> dict:
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise ChannelError("result channel tampered: malformed frame")
    if parts[1] != token.encode():
        raise ChannelError("result channel tampered: wrong token")
    if not parts[2].isdigit() or int(parts[2]) != len(body):
        raise ChannelError("result channel tampered: extra or missing bytes after the result")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ChannelError(f"result channel tampered: {exc}") from exc


RUNNER_AHEAD = "FORGE_WORKER_RUNNER"
"""Set for workers that will evaluate a candidate: they start its runner (and, on a GPU host,
the Nsight Compute runner) while they wait for the job, before restricting themselves."""


def evaluates_candidate(job: SandboxJob) -> bool:
    return job.payload.get("kind") == "evaluate"


class SandboxJob(BaseModel):
    payload: dict = Field(description="JSON the worker reads on stdin (its 'job' part)")
    timeout_s: float = Field(
        description="wall-clock limit; the whole process group is killed after it"
    )
    gpu: bool = Field(False, description="the job needs the GPU")
    argv_prefix: list[str] = Field(default_factory=list, description="wrapper such as ncu ... --")
    writable_dirs: list[str] = Field(
        default_factory=list, description="shared caches the job may write"
    )


class SandboxOutcome(BaseModel):
    message: dict | None = Field(None, description="the worker's result; None if none arrived")
    channel_error: str = ""
    timed_out: bool = False
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    info: SandboxInfo

    @classmethod
    def logs(cls, raw: bytes) -> str:
        return truncate(raw.decode(errors="replace"))


class Sandbox(Protocol):
    name: str

    def run(self, job: SandboxJob) -> SandboxOutcome:
        """Run the job to its end; a backend that streams the worker's log may also take
        `on_phase`, a callback for the phases the worker announces."""
        ...
