"""Fault matrix, part 1: dying workers (native crash, SIGKILL) under the Ray and process executors."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pyarrow.parquet as pq
import pytest

from tests.test_kill import assert_same_outputs, cli, env
from tests.test_processes import process_workers

pytestmark = pytest.mark.slow


@pytest.mark.fault("native crash inside a model call", injection="a stage calls os.abort() on one chosen sample (Ray executor; process executor)", behaviour="worker replaced, batch retried one by one, the sample becomes an error row worker_crashed, everything else ok", compared="every key once per manifest; only the victim is an error; its dependants are skipped upstream_failed")
@pytest.mark.parametrize("executor,cpus", [("ray", "1"), ("processes", "2")])
def test_native_crash_costs_one_row(casia_tree, tmp_path, executor, cpus):
    out = tmp_path / "out"
    victim = "0000002_002"
    proc = subprocess.run(cli(casia_tree, out, "--executor", executor, "--num-cpus", cpus,
                              "--set", f"center.abort_key={victim}"),
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["key"]: r for r in pq.read_table(out / "manifests" / "center").to_pylist()}
    assert rows[victim]["status"] == "error" and rows[victim]["error"].startswith("worker_crashed")
    others = [r for k, r in rows.items() if k != victim and r["key"].startswith("000000")]
    assert others and all(r["status"] == "ok" for r in others)
    colour = {r["key"]: r for r in pq.read_table(out / "manifests" / "colour").to_pylist()}
    assert colour[victim]["error"] == "upstream_failed: center"
    assert len(rows) == len(set(rows)) == pq.read_table(out / "plan" / "plan.parquet").num_rows
    assert "worker died" in proc.stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "a killed worker's temp files were left behind"


def _ray_workers() -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in ps.splitlines() if "ray::GroupWorker" in line]


@pytest.mark.fault("SIGKILL of a worker process mid-stage", injection="kill -9 of a ray::GroupWorker process (Ray executor) or of a worker process (process executor) while it sleeps in a batch", behaviour="the executor replaces the worker and retries the shard; the run completes", compared="manifests (minus duration_s), payloads, shards vs an uninterrupted run")
@pytest.mark.parametrize("executor,cpus", [("ray", "1"), ("processes", "2")])
def test_sigkill_of_a_worker_is_retried(casia_tree, tmp_path, executor, cpus):
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cli(casia_tree, ref, "--executor", "local"), env=env(), check=True, timeout=300)
    proc = subprocess.Popen(cli(casia_tree, out, "--executor", executor, "--num-cpus", cpus), env=env(sleep=0.3),
                            stderr=subprocess.PIPE, text=True)
    workers = _ray_workers if executor == "ray" else (lambda: process_workers(proc.pid))
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for pid in workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=killer)
    thread.start()
    _, err = proc.communicate(timeout=600)
    thread.join()
    assert killed, "no worker was seen to kill"
    assert proc.returncode == 0, err[-3000:]
    assert "worker died" in err
    assert_same_outputs(out, ref)
