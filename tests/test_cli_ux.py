"""What a user sees from the real CLI, captured through pipes (not a terminal).

One-line errors with exit 2 for a bad ``--out`` (1 for a full disk) and nothing written, no
ANSI codes, ``--version``, defaults in ``--help``, the note on assumed options, and the
third-party noise filter on the lines Ray and mediapipe really print.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import RUN_DEFAULTS
from pipeline.config import DEFAULT_PRESET, RunConfig
from pipeline.logs import LineFilter, is_noise
from pipeline.preflight import OutputFolderError, check_output_folder

REPO = Path(__file__).resolve().parents[1]
ANSI = "\x1b["


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and ANSI not in proc.stderr + proc.stdout
    for w in words:
        assert w in lines[0]
    return lines[0]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_version_names_the_package_and_key_dependencies():
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("faceweave ")
    names = {ln.split()[0] for ln in lines[1:]}
    assert {"python", "numpy", "torch", "mediapipe", "pyarrow", "ray", "pandas"} <= names
    assert ANSI not in proc.stdout and proc.stderr == ""


def test_help_shows_defaults_and_required_options():
    run_help = cli("run", "--help").stdout
    for flag, default in RUN_DEFAULTS.items():
        assert f"--{flag.replace('_', '-')}" in run_help
        assert f"[default: ({default})]" in run_help, flag
    assert ANSI not in run_help
    export_help = cli("export", "--help").stdout
    assert export_help.count("[required]") >= 3  # OUT, --format, --to


def test_run_defaults_shown_are_the_real_ones():
    fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    assert RUN_DEFAULTS["source"] == fields["source"] and RUN_DEFAULTS["out"] == fields["out"]
    assert RUN_DEFAULTS["executor"] == fields["executor"] and RUN_DEFAULTS["preset"] == DEFAULT_PRESET
    assert RUN_DEFAULTS["shard_size"] == "1000" and fields["shard_size"] is None  # plan.py's default


def test_assumed_source_and_out_are_named(tmp_path):
    (tmp_path / "out").write_text("a file, so the run stops right after the note")
    proc = cli("run", cwd=tmp_path)
    assert proc.returncode == 2
    note, error = proc.stderr.strip().splitlines()
    assert note.startswith("not given, assumed: --source sample") and f"--out out ({tmp_path / 'out'})" in note
    assert "(preset full)" in note and error.startswith("error: --out out is a file")
    given = cli("run", "--source", "sample", "--out", "out", cwd=tmp_path)  # both given: no note
    assert_one_line_error(given, 2, "is a file")


@pytest.mark.parametrize("case", ["file", "under_file", "sys"])
def test_bad_out_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "out", "sys": Path("/sys/kernel/faceweave")}[case]
    before = tree(tmp_path)
    proc = cli("run", "--source", "sample", "--out", str(out), "--preset", "lite", cwd=tmp_path)
    assert_one_line_error(proc, 2, str(out))
    assert tree(tmp_path) == before and (tmp_path / "f").read_text() == "x"


def test_folder_without_write_permission_is_one_line_exit_2(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    elif os.access(ro, os.W_OK):
        pytest.skip("this user can write into a 0555 folder")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([*prefix, sys.executable, "-m", "pipeline.cli", "run", "--source", "sample",
                               "--out", str(ro / "out"), "--preset", "lite"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, 2, "no write permission", str(ro))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_preflight_accepts_new_and_existing_folders(tmp_path):
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # a check creates nothing
    with pytest.raises(OutputFolderError, match="kernel filesystem"):
        check_output_folder("/proc/self/x")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_is_one_line_exit_1_and_nothing_half_written(casia_tree, tmp_path):
    """OUT on a 300 KiB tmpfs; where mounting is not permitted, ENOSPC is injected in the child."""
    from pipeline.readers.verify import verify

    env = {"FACEWEAVE_PLUGINS": "tests.plugin_stages"}
    mnt = tmp_path / "small"
    mounted = _mount_tmpfs(mnt, "300k")
    if not mounted:
        inject = tmp_path / "inject"
        inject.mkdir()
        (inject / "sitecustomize.py").write_text(
            "import errno\nfrom pipeline import manifest\n_add, _n = manifest.TarWriter.add, [0]\n"
            "def add(self, name, data):\n    _n[0] += 1\n"
            "    if _n[0] > 5:\n        raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "    _add(self, name, data)\nmanifest.TarWriter.add = add\n")
        env["PYTHONPATH"] = f"{inject}{os.pathsep}{REPO}"
    try:
        out = mnt / "out"
        proc = cli("run", "--source", "casia-webface", "--input", str(casia_tree), "--out", str(out),
                   "--stages", "colour", "--shard-size", "4", "--executor", "local", "-q", env=env)
        assert_one_line_error(proc, 1, "disk full", str(out))
        assert verify(out, dry_run=True)[0] == []  # no done marker vouches for a half-written file
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


# The lines a lite run really printed before this filter (Ray 2.60, mediapipe 0.10.21).
NOISE_LINES = [
    "2026-12-01 20:43:07,194\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled",
    "\x1b[36m(GroupWorker pid=11021)\x1b[0m INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "\x1b[36m(GroupWorker pid=11021)\x1b[0m WARNING: All log messages before absl::InitializeLog() is called "
    "are written to STDERR",
    "\x1b[36m(GroupWorker pid=11021)\x1b[0m W0000 00:00:1796157819.293887   11268 inference_feedback_manager.cc:114]"
    " Feedback manager requires a model with a single signature inference. Disabling support for feedback tensors.",
    "W0000 00:00:1796157820.435378   11267 landmark_projection_calculator.cc:186] Using NORM_RECT without "
    "IMAGE_DIMENSIONS is only supported for the square ROI. Provide IMAGE_DIMENSIONS or use PROJECTION_MATRIX.",
]
KEPT_LINES = [
    "source                   shard 1/1  9 samples      0.4 img/s  errors 0",
    "\x1b[36m(GroupWorker pid=7)\x1b[0m E0000 00:00:1.0   1 calculator_graph.cc:887] INTERNAL: graph failed",
    "UserWarning: a worker died on shard 00001 (ActorDiedError); retrying",
    "\x1b[36m(GroupWorker pid=7)\x1b[0m Traceback (most recent call last):",
]


def test_noise_filter_drops_only_third_party_chatter():
    # The Ray token notice is silenced at its logger; the filter needs only the native lines.
    assert [is_noise(ln) for ln in NOISE_LINES[1:]] == [True] * 4
    assert not any(is_noise(ln) for ln in KEPT_LINES)
    sink = io.StringIO()
    stream = LineFilter(sink)  # a StringIO is not a terminal: ANSI codes go too
    for ln in NOISE_LINES[1:] + KEPT_LINES:
        stream.write(ln[:10])
        stream.write(ln[10:] + "\n")
    stream.flush()
    assert sink.getvalue().splitlines() == [
        KEPT_LINES[0], "(GroupWorker pid=7) E0000 00:00:1.0   1 calculator_graph.cc:887] INTERNAL: graph failed",
        KEPT_LINES[2], "(GroupWorker pid=7) Traceback (most recent call last):"]


def test_forwarded_ray_lines_leave_stdout():
    out, err = io.StringIO(), io.StringIO()
    stdout = LineFilter(out, divert=LineFilter(err))
    stdout.write("(raylet) A worker died or was killed while executing a task\n")
    stdout.write("\x1b[36m(PackWorker pid=9)\x1b[0m hello\ndone: 9 of 9 samples packed\n")
    stdout.flush()
    assert out.getvalue() == "done: 9 of 9 samples packed\n"
    assert err.getvalue().splitlines() == ["(raylet) A worker died or was killed while executing a task",
                                           "(PackWorker pid=9) hello"]


NATIVE = """
import os, sys
from pipeline import logs
logs.NATIVE_FILTER_ALLOWED = True
with logs.quiet_third_party(), logs.native_stderr_filtered():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
    os.write(2, b"W0000 00:00:1796157820.435378   11267 landmark_projection_calculator.cc:186] Using NORM_RECT\\n")
    os.write(2, b"E0000 00:00:1.0   1 calculator_graph.cc:887] INTERNAL: a real native error\\n")
    print("from python", file=sys.stderr)
    print("a result")
os.write(2, b"after the block\\n")
"""


def test_native_lines_on_fd2_are_filtered_in_process():
    """--executor local: mediapipe's C++ writes to fd 2 of this process, below Python."""
    proc = subprocess.run([sys.executable, "-c", NATIVE], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a result\n"
    assert sorted(proc.stderr.splitlines()) == sorted([
        "E0000 00:00:1.0   1 calculator_graph.cc:887] INTERNAL: a real native error", "from python",
        "after the block"])


def test_audit_of_a_folder_that_is_no_output_says_what_is_missing(tmp_path):
    proc = cli("audit", str(tmp_path))
    assert_one_line_error(proc, 2, "is not the output folder of a run", "manifests/source", "pipeline run")
    proc = cli("audit", str(tmp_path / "nope"))
    assert_one_line_error(proc, 2, "does not exist")


def test_inspect_names_the_sample_input():
    from pipeline.readers.inspect.page import input_of
    from pipeline.sources.sample import SAMPLE_DIR

    assert str(SAMPLE_DIR) in input_of({"source": "sample", "input": None})
    assert input_of({"source": "folder", "input": "/data/x"}) == "/data/x"


def test_verbose_keeps_the_noise_but_not_the_colour():
    sink = io.StringIO()
    stream = LineFilter(sink, drop_noise=False)
    stream.write(NOISE_LINES[1] + "\n")
    stream.flush()
    assert sink.getvalue() == "(GroupWorker pid=11021) INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@pytest.mark.slow  # two plugin-stage runs through the CLI (~40 s on 2 busy cores)
@pytest.mark.parametrize("executor", ["local", "processes"])
def test_ctrl_c_is_one_line_and_the_rerun_finishes(casia_tree, tmp_path, executor):
    import signal
    import time

    out = tmp_path / "out"
    args = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(casia_tree),
            "--out", str(out), "--stages", "colour", "--shard-size", "4", "--executor", executor, "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACEWEAVE_PLUGINS": "tests.plugin_stages"}
    # A shell that started the suite in the background leaves SIGINT ignored in its children:
    # give the CLI the default disposition, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen(args, env={**env, "FACEWEAVE_TEST_SLEEP": "0.5"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((out / "manifests").glob("source/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["interrupted: finished shards are kept; rerun the same command to go on"]
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "shards" / "index.json").read_text())["samples"] > 0
