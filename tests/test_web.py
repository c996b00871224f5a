"""`forge serve`'s pages in-process (Starlette's TestClient) over a SQLite database seeded through
the store API (tests/web_seed.py): every page answers 200 with what it must show, filters and
sorting, 404 and 400 pages, the token and Host checks, secrets masked, nothing written; and
the `forge serve` command itself: its one-line refusals and a real server answering."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from html import unescape

import pytest
from sqlalchemy import text, update
from sqlmodel import Session, col
from starlette.testclient import TestClient
from typer.testing import CliRunner
from web_seed import Seeded, seed

from forge.cli.main import app
from forge.db.engine import DatabaseError
from forge.db.models import Candidate, LLMCall, Run
from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem
from forge.web.app import create_app

TOKEN = "tok-0123456789abcdef-xyz"
SECRET_TAIL = "9c1e2f3a4b"
SECRET = f"sk-proj-web-SECRET-{SECRET_TAIL}"
RUN_LINK = re.compile(r'<tr>\s*<td><a href="/runs/(\d+)">')


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("web")
    path = folder / "forge.db"
    seeded = seed(f"sqlite:///{path}", folder / "library")
    store = RunStore(f"sqlite:///{path}", read_only=True)
    client = TestClient(create_app(store), base_url="http://127.0.0.1")
    return {"path": path, "seeded": seeded, "store": store, "client": client}


def page(site: dict, path: str, status: int = 200) -> str:
    response = site["client"].get(path)
    assert response.status_code == status, (path, response.text[-2000:])
    return response.text


def listed_runs(html: str) -> list[int]:
    return [int(m) for m in RUN_LINK.findall(html)]


def every_path(seeded: Seeded, store: RunStore) -> list[str]:
    paths = ["/runs", "/library", "/search", "/search?q=softmax", "/search?q=exp2"]
    paths += [f"/runs/{r}" for r in seeded.runs.values()]
    for run_id in seeded.runs.values():
        for c in store.candidates(run_id):
            paths.append(f"/candidates/{c.id}")
            if c.parent_id is not None:
                paths.append(f"/candidates/{c.id}/diff")
    paths += [f"/library/{e}" for e in (1, 2)]
    paths += ["/batches", f"/batches/{seeded.batch}"]
    return paths


def test_every_page_answers(site):
    paths = every_path(site["seeded"], site["store"])
    assert len(paths) > 20
    for path in paths:
        html = page(site, path)
        assert html.startswith("<!doctype html>") and "</html>" in html, path
    home = site["client"].get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/runs"
    css = site["client"].get("/static/code.css")
    assert css.status_code == 200 and ".code .k" in css.text
    assert site["client"].get("/static/forge.css").status_code == 200


def test_batches_list_and_a_batch_links_its_runs_and_library_entry(site):
    seeded = site["seeded"]
    listing = page(site, "/batches")
    assert f'href="/batches/{seeded.batch}"' in listing and "nightly" in listing
    assert "1 failed, 1 finished" in listing and "$0.6250" in listing and ">2.0<" in listing
    batch = page(site, f"/batches/{seeded.batch}")
    for run in (seeded.runs["softmax"], seeded.runs["rms_norm"]):
        assert f'href="/runs/{run}"' in batch
    assert f'href="/library/{seeded.library_entry}"' in batch
    assert "provider did not answer" in batch and "(2 retried)" in batch
    assert f"forge report {seeded.batch}" in batch
    missing = site["client"].get("/batches/999")
    assert missing.status_code == 404 and "no batch 999" in missing.text


def test_runs_filter_and_sort(site):
    runs = site["seeded"].runs
    everything = page(site, "/runs")
    assert listed_runs(everything) == [
        runs["interrupted"],
        runs["cpu"],
        runs["rms_norm"],
        runs["layer_norm"],
        runs["softmax"],
    ]
    assert "5 of 5 runs" in everything and "1.93× (" in everything  # the best speedup, linked
    assert listed_runs(page(site, "/runs?op=rms_norm")) == [runs["rms_norm"]]
    assert listed_runs(page(site, "/runs?status=failed&op=")) == [runs["rms_norm"]]
    assert listed_runs(page(site, "/runs?model=openai/gpt-5-mini")) == [runs["rms_norm"]]
    assert listed_runs(page(site, "/runs?gpu=NVIDIA+H200")) == [runs["rms_norm"]]
    assert set(listed_runs(page(site, "/runs?gpu=-"))) == {runs["cpu"], runs["interrupted"]}
    assert listed_runs(page(site, "/runs?since=2026-11-22&until=2026-11-23")) == [
        runs["cpu"],
        runs["rms_norm"],
    ]
    filtered = page(site, "/runs?op=softmax&status=finished")
    assert listed_runs(filtered) == [runs["cpu"], runs["softmax"]] and "2 of 5 runs" in filtered
    assert '<option value="finished" selected>' in filtered  # the form keeps the choice
    best_first = listed_runs(page(site, "/runs?sort=best&order=desc"))
    assert best_first[:2] == [runs["softmax"], runs["layer_norm"]]  # 1.93x, 1.46x
    best_last = listed_runs(page(site, "/runs?sort=best&order=asc"))
    assert best_last[:2] == [runs["layer_norm"], runs["softmax"]]  # unmeasured last either way
    assert listed_runs(page(site, "/runs?sort=id&order=asc")) == sorted(runs.values())
    assert "No run matches" in page(site, "/runs?op=gelu")


def test_run_page_draws_the_search(site):
    seeded = site["seeded"]
    html = page(site, f"/runs/{seeded.runs['softmax']}")
    chart = html[html.index("<svg") : html.index("</svg>")]
    for t, r in ((0, 0), (0, 3), (1, 3)):
        assert f'href="/candidates/{seeded.candidates[f"t{t}r{r}"]}"' in chart
    assert "torch.compile 1.34×" in chart  # 0.4100 / 0.3050 at the target set 'large'
    assert "speed of light 4.27×" in chart  # 0.4100 / 0.0960
    assert "eager 1×" in chart and 'class="series best"' in chart
    assert 'class="mark traj-1 uncounted"' in chart  # the suspicious 14.2x is not a best
    assert "Tokens over time" in html and "Cost over time" in html
    assert html.count("<svg") == 3
    tree = html[html.index("<h2>Trajectories</h2>") : html.index("<h2>Rounds</h2>")]
    assert (
        tree.count('<ul class="tree">') == 2 + 6
    )  # one root list per trajectory, a list per child
    assert "evaluation.seeds" in html and "budget_usd" in html  # the settings, flattened
    cpu = page(site, f"/runs/{seeded.runs['cpu']}")
    assert "No candidate of this run was timed" in cpu and "<svg" not in cpu
    assert "No LLM call recorded" in cpu
    assert "No candidate yet" in page(site, f"/runs/{seeded.runs['interrupted']}")


def test_candidate_page_shows_the_evidence(site):
    seeded = site["seeded"]
    best = page(site, f"/candidates/{seeded.candidates['t0r3']}")
    assert 'class="code"' in best and '<span class="nd">@triton</span>' in best  # highlighted
    assert "best of the run" in best
    assert f'<a href="/candidates/{seeded.candidates["t0r2"]}">' in best  # its parent
    assert '<span class="gi">+    inv = 1.0 / tl.sum(e, axis=0)</span>' in best  # the diff
    timings = best[best.index("Timings per input set") : best.index("<h2>Profile</h2>")]
    for cell in ("0.4100", "0.3050", "0.0960", "0.0041", "1.93×", "target"):
        assert cell in timings, cell
    assert "dram__throughput.avg.pct_of_peak_sustained_elapsed" in best and "67.55" in best
    assert "Multiply by the reciprocal of the sum" in best  # the plan it implements
    assert "Write a Triton kernel for softmax (round 3)." in best  # the Coder's prompt
    judged = page(site, f"/candidates/{seeded.candidates['t0r1']}")
    notes = judged[judged.index("diagnosis and plan") : judged.index("<h2>LLM calls</h2>")]
    assert "DRAM throughput is at 58% of peak" in notes and "compute" in notes
    failed = page(site, f"/candidates/{seeded.candidates['t0r2']}")
    assert "517 of 33000 differ" in failed and "(first at 3,998)" in failed
    assert '<span class="badge incorrect">incorrect</span>' in failed
    rms = page(site, f"/candidates/{seeded.candidates['rms']}")
    assert "invalid JSON (Expecting value" in rms and "not JSON at all" in rms
    cpu = page(site, f"/candidates/{seeded.candidates['cpu']}")
    assert "timings are not meaningful on cpu" in cpu


def test_side_by_side_diff(site):
    c = site["seeded"].candidates
    html = page(site, f"/candidates/{c['t0r3']}/diff")
    assert f"Candidate {c['t0r3']} against candidate {c['t0r2']}" in html
    changed = re.findall(r'<tr class="(replace|insert|delete)">', html)
    assert changed == ["replace", "insert"]  # y = e / sum  ->  inv = 1 / sum; y = e * inv
    assert "2 lines added or changed" in html and "1 removed or changed" in html
    other = page(site, f"/candidates/{c['t0r3']}/diff?against={c['t1r0']}")
    assert f"against candidate {c['t1r0']}" in other
    root = page(site, f"/candidates/{c['t0r0']}/diff", 404)
    assert "has no parent" in root


def test_library_pages(site):
    seeded = site["seeded"]
    html = page(site, "/library")
    assert "3 of 3 entries" in html
    assert f'<a href="/candidates/{seeded.candidates["t0r3"]}">' in html
    assert f'<a href="/runs/{seeded.runs["softmax"]}">run {seeded.runs["softmax"]}</a>' in html
    assert 'sm_90<br><span class="meta">NVIDIA H100 80GB HBM3</span>' in html
    assert "<code>batch_size=4096,dim=8192</code>" in html
    assert "2 of 3 entries" in page(site, "/library?op=softmax&gpu=sm_90&dtype=float32")
    only_a100 = page(site, "/library?gpu=NVIDIA+A100-SXM4-80GB")
    assert (
        "1 of 3 entries" in only_a100 and f'href="/runs/{seeded.runs["layer_norm"]}"' in only_a100
    )
    assert "1 of 3 entries" in page(site, "/library?bucket=batch_size%3D2048%2Chidden%3D5120")
    assert "No entry matches" in page(site, "/library?gpu=sm_75")
    entry = page(site, f"/library/{seeded.library_entry}")
    assert "0.2124" in entry and "yes" in entry and '<span class="nd">@triton</span>' in entry


def test_search(site):
    by_op = page(site, "/search?q=SOFT")
    assert '<a href="/runs?op=softmax">softmax</a>' in by_op
    code = page(site, "/search?q=exp2")
    assert "<mark>exp2</mark>" in code
    assert code.count('<section class="hit">') == 7  # 5 candidates and 2 library entries
    assert "No candidate or library kernel contains" in page(site, "/search?q=%25")  # a literal %
    assert "No operator name contains" in page(site, "/search?q=exp2")


def test_unknown_ids_and_bad_parameters_are_pages(site):
    for path, needle in (
        ("/runs/9999", "no run 9999"),
        ("/candidates/9999", "no candidate 9999"),
        ("/library/9999", "no library entry 9999"),
        ("/nowhere", "no page at /nowhere"),
    ):
        html = page(site, path, 404)
        assert needle in html and "Traceback" not in html and "<nav>" in html
    for path, needle in (
        ("/runs?since=yesterday", "since='yesterday'"),
        ("/runs?sort=cost;drop", "sort="),
        ("/runs?status=lost", "status='lost'"),
        ("/candidates/1/diff?against=0", "against='0': Input should be greater than or equal to 1"),
    ):
        assert needle in unescape(page(site, path, 400)), path
    assert site["client"].post("/runs").status_code == 405


def test_security_headers_and_host_check(site):
    response = site["client"].get("/runs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    client = site["client"]
    assert client.get("/runs", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/runs", headers={"host": "[::1]:8765"}).status_code == 200
    rebound = client.get("/runs", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 400 and "this machine's own names" in rebound.text


def test_token_is_checked_on_every_request(site):
    app = create_app(site["store"], token=TOKEN, hosts=None)
    client = TestClient(app, base_url="http://192.0.2.10")
    for path in ("/runs", "/runs/1", "/static/forge.css", "/nowhere"):
        assert client.get(path).status_code == 401, path
    assert (
        client.get("/runs", headers={"authorization": "Bearer wrong-token-0123456"}).status_code
        == 401
    )
    assert client.get("/runs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get(f"/runs?token={TOKEN[:-1]}").status_code == 401
    link = client.get(f"/runs/1?token={TOKEN}&x=1", follow_redirects=False)
    assert link.status_code == 303 and link.headers["location"] == "/runs/1?x=1"
    assert (
        TOKEN not in link.headers["set-cookie"] and "httponly" in link.headers["set-cookie"].lower()
    )
    assert client.get("/runs/1").status_code == 200  # the cookie now carries it
    assert client.get("/static/forge.css").status_code == 200


def test_nothing_is_written(site):
    before = hashlib.sha256(site["path"].read_bytes()).hexdigest()
    for path in every_path(site["seeded"], site["store"]):
        page(site, path)
    assert hashlib.sha256(site["path"].read_bytes()).hexdigest() == before
    with pytest.raises(DatabaseError, match="read-only"):
        with site["store"].engine.begin() as connection:
            connection.execute(text("UPDATE run SET op = 'x'"))


def test_a_database_failing_while_serving_is_a_page(site, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copy(site["path"], copy)
    store = RunStore(f"sqlite:///{copy}", read_only=True)
    client = TestClient(create_app(store), base_url="http://127.0.0.1")
    assert client.get("/runs").status_code == 200
    copy.write_bytes(b"overwritten " * 2048)  # replaced under the server's feet
    store.engine.dispose()
    failed = client.get("/runs/1")
    assert failed.status_code == 503 and "is not a Forge database" in failed.text
    assert "Traceback" not in failed.text


def test_secrets_never_reach_a_page(tmp_path, monkeypatch):
    """Rows written before redaction existed (or with a key this process knows now) are masked
    when shown: the value of a secret-looking variable and key-shaped text alike."""
    url = f"sqlite:///{tmp_path / 'forge.db'}"
    store = RunStore(url)
    problem = resolve_problem("softmax")
    run = store.create_run(problem, {}, "openai/gpt-5", "openai/gpt-5", "triton", "cuda")
    parent = store.add_candidate(run, 0, 0, "x = 1\n", "triton", "initial")
    cand = store.add_candidate(run, 0, 1, "x = 2\n", "triton", "optimize", parent_id=parent)
    call = store.record_llm_call(run, "coder", "openai/gpt-5", [], "", 1, 1, 0.0, 1.0)
    leaked = f'KEY = "{SECRET}"  # also bearer abcdefghijklmnop\n'
    with Session(store.engine) as s:  # as an older Forge (no redaction) would have stored them
        s.exec(update(Candidate).where(col(Candidate.id) == cand).values(source=leaked))
        s.exec(update(Run).where(col(Run.id) == run).values(error=f"provider said {SECRET}"))
        s.exec(
            update(LLMCall)
            .where(col(LLMCall.id) == call)
            .values(
                candidate_id=cand,
                messages_json=f'[{{"role": "user", "content": "use {SECRET}"}}]',
                response_text=f"here: {SECRET}",
            )
        )
        s.commit()
    store.engine.dispose()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    client = TestClient(create_app(RunStore(url, read_only=True)), base_url="http://127.0.0.1")
    paths = ["/runs", f"/runs/{run}", f"/candidates/{cand}", f"/candidates/{cand}/diff"]
    paths += ["/search?q=SECRET", "/search?q=KEY", "/search?q=abcdefgh"]
    pages = {p: client.get(p) for p in paths}
    for path, response in pages.items():
        assert response.status_code == 200, path
        for hidden in (SECRET, SECRET_TAIL, "ijklmnop"):  # not even a part next to a match
            assert hidden not in response.text, (path, hidden)
    assert "[REDACTED:OPENAI_API_KEY]" in pages[f"/candidates/{cand}"].text
    assert "[REDACTED:OPENAI_API_KEY]" in pages[f"/runs/{run}"].text
    assert "<mark>KEY</mark>" in pages["/search?q=KEY"].text
    assert "No candidate or library kernel contains" in pages["/search?q=SECRET"].text


# ------------------------------------------------------------------------- the command


def refused(*args: str) -> str:
    """`forge ARGS` in-process: it must exit 2 with one `error:` line on stderr."""
    out = CliRunner(env={"FORGE_SERVE_TOKEN": None}).invoke(app, list(args))
    assert out.exit_code == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_serve_refuses_in_one_line(site, tmp_path):
    db = f"sqlite:///{site['path']}"
    assert "no database at" in refused("serve", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    assert "is not a Forge database" in refused("serve", "--db", f"sqlite:///{junk}")
    public = refused("serve", "--db", db, "--host", "0.0.0.0")
    assert "--token" in public and "FORGE_SERVE_TOKEN" in public
    assert "16" in refused("serve", "--db", db, "--host", "0.0.0.0", "--token", "short")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = refused("serve", "--db", db, "--port", port)
        assert f"port {port}" in busy and "--port" in busy


def test_serve_answers_until_interrupted(site):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge.cli.main",
            "serve",
            "--db",
            f"sqlite:///{site['path']}",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "read-only at http://127.0.0.1:" in line and "(5 runs)" in line, line
        url = re.search(r"http://\S+/", line).group(0)
        with urllib.request.urlopen(url + "runs/1", timeout=30) as response:
            assert response.status == 200 and b"Speedup per round" in response.read()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and out.strip() == "stopped", (out, err)
    assert "Traceback" not in err
