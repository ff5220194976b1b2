"""The process executor (the default on a machine without a GPU): same outputs as in-process, a
killed driver's workers stop, errors reach the driver, the worker count (a sample that kills its
worker and a killed worker: tests/test_faults.py)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.core.runner.pool import _portable
from tests.test_kill import assert_same_outputs, cli, env


def process_workers(driver: int) -> list[int]:
    """The worker processes of a driver: children of its fork server forked from it, so with its
    command line (not the ldconfig or gcc that an import runs while the server preloads; read from
    /proc: ps cuts long command lines to the terminal's width)."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        procs[int(stat.parent.name)] = (ppid, cmd)
    servers = {pid: cmd for pid, (ppid, cmd) in procs.items() if ppid == driver and b"forkserver" in cmd}
    return [pid for pid, (ppid, cmd) in procs.items() if ppid in servers and cmd == servers[ppid]]


def test_processes_match_in_process_run(casia_tree, tmp_path):
    """Several shards over two workers give byte for byte what one process gives."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cli(casia_tree, ref, "--executor", "local"), env=env(), check=True, timeout=300)
    proc = subprocess.run(cli(casia_tree, out, "--executor", "processes", "--num-cpus", "2"), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(out, ref)
    import json

    assert json.loads((out / "run.json").read_text())["summary"]["executor"] == "processes"


@pytest.mark.fault("SIGKILL of the driver (process executor)", injection="kill -9 of the driver alone, its workers left running mid-stage", behaviour="the workers end within a second and write nothing more; the rerun completes", compared="no worker process left; outputs vs an uninterrupted run")
def test_workers_end_with_their_driver(casia_tree, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cli(casia_tree, ref, "--executor", "local"), env=env(), check=True, timeout=300)
    proc = subprocess.Popen(cli(casia_tree, out, "--executor", "processes", "--num-cpus", "2"), env=env(sleep=0.4))
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and not (workers and list((out / "journal").rglob("*.json"))):
        workers = process_workers(proc.pid)
        time.sleep(0.05)
    assert workers, "no worker process seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
             "Z" not in open(f"/proc/{pid}/stat").read().split()[2]]
    assert not alive, f"workers outlived their driver: {alive}"
    subprocess.run(cli(casia_tree, out, "--executor", "processes", "--num-cpus", "2"), env=env(), check=True,
                   timeout=300)
    assert_same_outputs(out, ref)


def test_a_worker_error_reaches_the_driver_with_its_traceback():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    try:
        raise Unpicklable("bad state")
    except Unpicklable as exc:
        portable = _portable(exc)
    again = pickle.loads(pickle.dumps(portable))
    assert isinstance(again, RuntimeError) and "Unpicklable: bad state" in str(again)
    assert any("in a worker process" in note and "raise Unpicklable" in note for note in again.__notes__)
    err = _portable(ValueError("plain"))
    assert isinstance(err, ValueError) and err.__notes__


def test_auto_picks_processes_without_a_gpu_and_splits_the_cores(monkeypatch):
    from pipeline.config import RunConfig, choose_executor
    from pipeline.core.runner.pool import ProcessPipeline

    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/nvidiactl" else os.path.lexists(p))
    assert choose_executor(RunConfig()) == "processes"
    assert choose_executor(RunConfig(ray_address="10.0.0.1:6379")) == "ray"
    assert choose_executor(RunConfig(num_gpus=1)) == "ray"
    assert choose_executor(RunConfig(executor="local")) == "local"
    one = ProcessPipeline([object()], ["00000"], workers=8, cores=8, max_attempts=8)
    many = ProcessPipeline([object()], [f"{i:05d}" for i in range(20)], workers=8, cores=8, max_attempts=8)
    assert (one.n_workers, one.threads) == (1, {"00000": 8})  # a one-shard run: one worker, every core
    assert many.n_workers == 8
    # 20 shards on 8 workers: two full rounds on one thread each, the last 4 shards on 2 threads
    assert [many.threads[f"{i:05d}"] for i in range(20)] == [1] * 16 + [2] * 4
    three = ProcessPipeline([object()], ["a", "b", "c"], workers=2, cores=2, max_attempts=8)
    assert three.threads == {"a": 1, "b": 1, "c": 2}  # fixed by the plan, whoever runs "c"


def test_a_run_of_less_than_two_rounds_gets_a_worker_per_shard():
    """3 shards on 2 cores: three one-thread workers share the cores from the start (measured
    faster than the third shard alone on two threads at the end); longer runs keep one per core."""
    from pipeline.core.runner.pool import ProcessPipeline
    from pipeline.core.threads import worker_count, workers_for

    assert [worker_count(2, n) for n in (1, 2, 3, 4, 5)] == [1, 2, 3, 2, 2]
    assert [worker_count(8, n) for n in (1, 8, 12, 15, 16, 494)] == [1, 8, 12, 15, 8, 8]
    assert workers_for(2, 3, 0.0, None) == (3, "")
    three = ProcessPipeline([object()], ["a", "b", "c"], workers=3, cores=2, max_attempts=8)
    assert three.threads == {"a": 1, "b": 1, "c": 1} and three.layout() == "3 worker processes x 1 thread"


def test_memory_caps_the_worker_count():
    from pipeline.core.threads import WORKER_RUNTIME_MB, workers_for
    from pipeline.config import resolve
    from pipeline.core.schedule import prepare

    assert workers_for(8, 100, 0.0, None) == (8, "")
    assert workers_for(8, 3, 0.0, 64_000) == (3, "")
    n, why = workers_for(8, 100, 5000.0, 16_000)  # the full preset's size on a 16 GB laptop
    assert n == int(0.8 * 16_000 // (5000 + WORKER_RUNTIME_MB)) == 2 and "not 8" in why and "--num-cpus" in why
    assert workers_for(8, 100, 50_000.0, 16_000)[0] == 1  # never fewer than one
    _, _, lite = prepare(resolve(preset="lite"))
    assert 0 < sum(s.resident_mb() for s in lite.values()) < 300  # small bundled models


def test_the_summary_says_where_the_work_ran(casia_tree, tmp_path):
    out = tmp_path / "out"
    args = [a for a in cli(casia_tree, out, "--executor", "processes", "--num-cpus", "2") if a != "-q"]
    proc = subprocess.run(args, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 worker processes x 1 thread" in " ".join(proc.stdout.split())  # the title may wrap
    import json

    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["workers"] == "2 worker processes x 1 thread"
    # CPU seconds inside the model calls beside their wall seconds (what the bench divides by cores)
    stages = summary["stages"].values()
    assert all(0 <= st["cpu_seconds"] <= 2 * st["seconds"] + 0.1 for st in stages)
    assert sum(st["cpu_seconds"] for st in stages) > 0


@pytest.mark.parametrize("bad, message", [
    (("--input", "{empty}"), "expected one folder per identity"),  # found once the config is read
    (("--input", "{empty}", "--preset", "nosuch"), "nosuch"),  # the config itself: the server started before it
])
def test_cli_exit_kills_a_fork_server_still_importing(tmp_path, bad, message):
    """A run that fails after the fork server started (a fresh output: it starts before the
    config is read) ends at once, with nothing left holding the caller's stdout and stderr."""
    import sys

    (tmp_path / "empty").mkdir()
    args = ["--source", "casia-webface", "--out", str(tmp_path / "out"), "--preset", "lite",
            *(a.format(empty=tmp_path / "empty") for a in bad)]
    script = (f"import os, sys; sys.argv = ['pipeline', 'run', *{args!r}]\n"
              "from multiprocessing import forkserver\n"
              "import pipeline.cli as c\n"
              "real = c._exit_now\n"
              "def spy(code):\n"
              "    print('server', forkserver._forkserver._forkserver_pid, flush=True)\n"
              "    real(code)\n"
              "c._exit_now = spy\n"
              "c.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
    pid = int(proc.stdout.split("server", 1)[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_flags_alone_start_the_workers_early_only_where_they_will_run(tmp_path, monkeypatch):
    from pipeline.cli import _fresh_run_on_workers as early

    monkeypatch.setattr(os.path, "exists", lambda p, real=os.path.exists: False if p == "/dev/nvidiactl" else real(p))
    out = str(tmp_path / "out")
    assert early(None, None, None, out) and early("processes", None, None, out) and early("auto", None, 0, out)
    assert not early("local", None, None, out) and not early("ray", None, None, out)
    assert not early(None, "10.0.0.1:6379", None, out)  # a cluster: Ray
    assert not early(None, None, 1, out)  # a GPU: auto decides once the config is read
    assert early("processes", None, 1, out)  # told so
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text("{}")
    assert not early(None, None, None, out)  # a rerun: first the cheap "nothing to do" check


def _worker_imports() -> dict[str, bool]:
    """What a worker forked by the fork server has imported, after writing a manifest table."""
    import sys

    import pyarrow as pa

    from pipeline.core.manifest import validate_columns

    validate_columns([{"key": "k"}], pa.schema([("key", pa.string())]))
    return {"torch": "torch" in sys.modules, "mesh": "mediapipe.python.solutions.face_mesh" in sys.modules,
            "cli": "typer" in sys.modules, "pandas": "pandas" in sys.modules,
            "pyplot": type(sys.modules.get("matplotlib.pyplot")).__name__ == "module"}


def test_workers_start_with_the_models_imported_and_skip_pandas_and_pyplot():
    """The fork server imports the models once (a worker starts in milliseconds); pyarrow's
    pandas probe and mediapipe's pyplot, ~2 s of each worker's first shard, are not paid at all."""
    from pipeline.core import forkserver

    with forkserver.context().Pool(1) as pool:
        seen = pool.apply(_worker_imports)
    assert seen == {"torch": True, "mesh": True, "cli": True, "pandas": False, "pyplot": False}
