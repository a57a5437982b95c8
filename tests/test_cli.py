"""`dask scheduler` and `dask worker` processes started from the command line.

The worker command lines are the README's, run as written except for the scheduler
address (a free port on loopback) and a worker name to find each one by.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed import Client

import fastworker

from test_readme import blocks

DASK = str(Path(sys.executable).with_name("dask"))
README_ADDRESS = "tcp://127.0.0.1:8786"
STOCK = "distributed.worker_state_machine.WorkerState"
COMPILED = "fastworker.workerstate.WorkerState"


class Processes:
    """Started processes, each in its own session, stopped (then killed) at the end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv, *, env=None, name="proc"):
        log = self.directory / f"{name}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            argv,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=self.directory,
        )
        self.procs.append((proc, log))
        return proc, log

    def stop(self, proc):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop_all(self):
        for proc, _ in reversed(self.procs):
            self.stop(proc)


def scheduler_address(proc, log, sched_file: Path, timeout: float = 60) -> str:
    """The address a starting `dask scheduler --scheduler-file` writes (waits for it)."""
    deadline = time.monotonic() + timeout
    while not sched_file.exists() or not sched_file.read_text().strip():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written whole, but give the listener a moment
    return json.loads(sched_file.read_text())["address"]


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    procs = Processes(tmp_path_factory.mktemp("cli"))
    yield procs
    procs.stop_all()


@pytest.fixture(scope="module")
def scheduler(processes):
    """A `dask scheduler` process on loopback, on a free port; its address."""
    sched_file = processes.directory / "scheduler.json"
    proc, log = processes.start(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)],
        name="scheduler",
    )
    return scheduler_address(proc, log, sched_file)


@pytest.fixture(scope="module")
def client(scheduler):
    with Client(scheduler, timeout=30) as c:
        yield c


def readme_worker_commands():
    (shell,) = blocks("sh")
    return [line for line in shell.splitlines() if " dask worker " in f" {line} "]


def start_worker(processes, command, address, name, extra_env=None):
    """Start a README-style `[ENV=value ...] dask worker ADDR options` line."""
    words = shlex.split(command.replace(README_ADDRESS, address))
    env = dict(extra_env or {})
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:2] == ["dask", "worker"]
    argv = [DASK, *words[1:], "--name", name, "--nthreads", "1", "--no-dashboard",
            "--host", "127.0.0.1"]
    return processes.start(argv, env=env, name=name)


def wait_for_names(client, names, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        info = client.scheduler_info(n_workers=-1)["workers"]
        by_name = {w["name"]: addr for addr, w in info.items()}
        if set(names) <= set(by_name):
            return {name: by_name[name] for name in names}
        assert time.monotonic() < deadline, f"workers {names} did not join: {by_name}"
        time.sleep(0.2)


def stop_and_forget(processes, client, procs):
    for proc, _ in procs:
        processes.stop(proc)
    deadline = time.monotonic() + 60
    while client.scheduler_info(n_workers=-1)["workers"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_readme_worker_commands(processes, scheduler, client):
    commands = readme_worker_commands()
    assert len(commands) == 4
    names = [f"readme-{i}" for i in range(len(commands))]
    procs = [
        start_worker(processes, cmd, scheduler, name) for cmd, name in zip(commands, names)
    ]
    try:
        addrs = wait_for_names(client, names)
        status = client.run(fastworker.status)
        for cmd, name in zip(commands, names):
            state_class = status[addrs[name]]["state_class"]
            if cmd.startswith("DASK_FASTWORKER__ENABLED=False"):
                assert state_class == STOCK, cmd
                assert "fastworker.enabled is False" in status[addrs[name]]["reason"]
            else:
                assert state_class == COMPILED, cmd
        # Real work across the four, dependencies travelling between them.
        futures = client.map(lambda i: i * 2, range(400), pure=False)
        total = client.submit(sum, futures)
        assert total.result() == 2 * sum(range(400))
        nanny = {
            name: "--no-nanny" not in cmd for cmd, name in zip(commands, names)
        }
        kinds = client.run(lambda dask_worker: dask_worker.nanny is not None)
        assert {n: kinds[addrs[n]] for n in names} == nanny
    finally:
        stop_and_forget(processes, client, procs)


@pytest.fixture(scope="module")
def fake_version_path(tmp_path_factory):
    """A sitecustomize that makes distributed report release 2099.1.0 (inherited by
    nanny-spawned worker processes through PYTHONPATH)."""
    directory = tmp_path_factory.mktemp("fake-version")
    (directory / "sitecustomize.py").write_text(
        "import importlib.metadata as _md\n"
        "_real = _md.version\n"
        "_md.version = lambda name: '2099.1.0' if name == 'distributed' else _real(name)\n"
    )
    return str(directory)


@pytest.mark.parametrize(
    "options",
    ["--preload fastworker", "--worker-class fastworker.Worker",
     "--worker-class fastworker.Worker --no-nanny"],
)
def test_unsupported_version_keeps_stock_worker(
    processes, scheduler, client, fake_version_path, options
):
    name = "fake-" + options.split()[-1].replace(".", "-")
    pythonpath = os.pathsep.join(filter(None, [fake_version_path, os.environ.get("PYTHONPATH")]))
    proc, log = start_worker(
        processes, f"dask worker {README_ADDRESS} {options}", scheduler, name,
        extra_env={"PYTHONPATH": pythonpath},
    )
    try:
        addr = wait_for_names(client, [name])[name]
        status = client.run(fastworker.status, workers=[addr])[addr]
        assert status["state_class"] == STOCK
        assert "distributed 2099.1.0 is installed" in status["reason"]
        assert client.submit(sum, [1, 2, 3], workers=[addr]).result() == 6
    finally:
        stop_and_forget(processes, client, [(proc, log)])
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "keeps distributed's stock state machine" in line]
    assert len(warnings) == 1, text
    assert "WARNING" in warnings[0] and "2099.1.0" in warnings[0]


def _start_scheduler(processes, name, env=None):
    sched_file = processes.directory / f"{name}.json"
    proc, log = processes.start(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file), "--preload", "fastworker"],
        env=env, name=name,
    )
    return proc, log, scheduler_address(proc, log, sched_file)


@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
@pytest.mark.parametrize("release", ["supported", "unsupported"])
def test_scheduler_preload_runs_the_scheduler_plugin(processes, fake_version_path, release):
    """`dask scheduler --preload fastworker`: low-latency dispatch to workers that
    join, reported by status and logged once at INFO; refused with one warning next
    to an unsupported distributed release."""
    env = None
    if release == "unsupported":
        pythonpath = os.pathsep.join(filter(None, [fake_version_path, os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": pythonpath}
    proc, log, address = _start_scheduler(processes, f"sched-preload-{release}", env)
    worker = start_worker(processes, f"dask worker {README_ADDRESS}", address, f"w-{release}")
    try:
        with Client(address, timeout=30) as c:
            wait_for_names(c, [f"w-{release}"])
            status = c.run_on_scheduler(fastworker.status)
            assert c.submit(sum, [1, 2, 3]).result() == 6
    finally:
        processes.stop(worker[0])
        processes.stop(proc)
    text = log.read_text()
    if release == "supported":
        assert status["scheduler_plugin"] is True and status["paced_streams"] == 1, status
        rules = [line for line in text.splitlines() if "low-latency dispatch on the scheduler" in line]
        assert len(rules) == 1 and "INFO" in rules[0], text
    else:
        assert status["scheduler_plugin"] is False
        assert "2099.1.0 is installed" in status["reason"]
        warnings = [line for line in text.splitlines() if "keeps distributed's stock dispatch" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0], text
