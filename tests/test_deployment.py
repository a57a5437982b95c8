"""The deployment recipes of docs/deployment.md, run as written against real processes.

Each test reads its recipe from the page (the fenced block whose first line is
``# recipe: NAME``) and starts what a deployment would start: `dask scheduler` and
`dask worker` processes with the recipe's command line and environment, or, for
dask-jobqueue, the worker command of the job script that dask-jobqueue writes from the
recipe's configuration. Only what a local run needs is changed (``localise``): the
scheduler's host and port become a free port on loopback, dashboards get free ports,
and each worker gets a name to be found by. Then every worker must run fastworker's
compiled state machine, the scheduler must run the dispatch plugin, and a graph must
compute.
"""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distributed import Client

import fastworker

from test_cli import Processes, scheduler_address, wait_for_names

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "deployment.md"
DASK = str(Path(sys.executable).with_name("dask"))
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def recipe(name: str) -> str:
    """The body of the page's block marked ``# recipe: name`` (the marker left out)."""
    found = [body for _, body in FENCE.findall(PAGE.read_text())
             if body.splitlines()[0].strip() == f"# recipe: {name}"]
    assert len(found) == 1, name
    return found[0].split("\n", 1)[1]


def executable(argv: list[str]) -> list[str]:
    """The recipe's program, from this environment."""
    head, rest = argv[0], list(argv[1:])
    if head == "dask":
        return [DASK, *rest]
    if head in ("dask-scheduler", "dask-worker"):
        legacy = Path(sys.executable).with_name(head)
        if legacy.exists():
            return [str(legacy), *rest]
        return [DASK, head.split("-")[1], *rest]  # no longer installed: see the page
    if Path(head).name.startswith("python"):
        return [sys.executable, *rest]
    raise AssertionError(f"unexpected program {head!r}")


_LOCAL_OPTIONS = ("--port", "--dashboard-address", "--host", "--scheduler-file")


def localise(argv: list[str], address: str | None = None) -> list[str]:
    """``argv`` without host, port and dashboard options, the scheduler's address
    (``...scheduler:PORT``) replaced by ``address``."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word in _LOCAL_OPTIONS:
            next(words)
            continue
        if word.startswith(tuple(f"{o}=" for o in _LOCAL_OPTIONS)):
            continue
        if address is not None and re.fullmatch(r"(tcp://)?[\w.-]*scheduler:\d+", word):
            word = address
        out.append(word)
    return out


class Deployment:
    """A scheduler and workers started from a recipe's command lines."""

    def __init__(self, processes: Processes):
        self.processes = processes
        self.names: list[str] = []
        self.address: str | None = None

    def scheduler(self, argv: list[str], env: dict | None = None) -> str:
        sched_file = self.processes.directory / f"scheduler-{len(self.processes.procs)}.json"
        proc, log = self.processes.start(
            [*executable(localise(argv)), "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
            env=env, name="scheduler",
        )
        self.address = scheduler_address(proc, log, sched_file)
        return self.address

    def worker(self, argv: list[str], env: dict | None = None, *, name_option=True) -> str:
        name = f"w{len(self.names)}"
        self.names.append(name)
        argv = [*executable(localise(argv, self.address)), "--host", "127.0.0.1",
                "--dashboard-address", "127.0.0.1:0"]
        if name_option:
            argv += ["--name", name]
        else:  # the recipe names the worker itself, from DASK_WORKER_NAME
            env = {**(env or {}), "DASK_WORKER_NAME": name}
        self.processes.start(argv, env=env, name=name)
        return name

    def check(self, address: str | None = None) -> None:
        with Client(address or self.address, timeout=30) as client:
            addrs = wait_for_names(client, self.names)
            status = client.run(fastworker.status)
            for name in self.names:
                assert status[addrs[name]]["fastworker"] is True, (name, status[addrs[name]])
            assert client.run_on_scheduler(fastworker.status)["scheduler_plugin"] is True
            futures = client.map(lambda i: i + 1, range(50), pure=False)
            assert client.submit(sum, futures).result() == sum(range(1, 51))


@pytest.fixture
def deployment(tmp_path):
    processes = Processes(tmp_path)
    yield Deployment(processes)
    processes.stop_all()


def command_lines(block: str) -> list[tuple[dict, list[str]]]:
    """``[ENV=value ...] program args`` lines of a shell block: (env, argv)."""
    out = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        env = {}
        while "=" in words[0] and not words[0].startswith("-"):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        out.append((env, words))
    return out


def test_cli_recipe(deployment):
    (_, scheduler), *workers = command_lines(recipe("cli"))
    assert scheduler[:2] == ["dask", "scheduler"] and len(workers) == 3
    deployment.scheduler(scheduler)
    for _, argv in workers:
        deployment.worker(argv)
    deployment.check()


def test_dask_config_recipe(deployment, tmp_path):
    config = tmp_path / "fastworker.yaml"
    config.write_text(recipe("dask-config"))
    assert yaml.safe_load(config.read_text())["distributed"]["worker"]["preload"] == [
        "fastworker"]
    (env_s, scheduler), (env_w, worker) = command_lines(recipe("dask-config-commands"))
    assert set(env_s) == set(env_w) == {"DASK_CONFIG"}
    # the commands carry no fastworker option: the file alone switches it on
    assert not any("fastworker" in word for word in scheduler + worker)
    deployment.scheduler(scheduler, env={"DASK_CONFIG": str(config)})
    deployment.worker(worker, env={"DASK_CONFIG": str(config)})
    deployment.check()


def test_jobqueue_recipe(deployment):
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    import dask

    config = yaml.safe_load(recipe("jobqueue"))
    slurm = config["jobqueue"]["slurm"]
    local = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    # each key of the recipe set over dask-jobqueue's defaults, as a YAML file does
    settings = {f"jobqueue.slurm.{key}": value for key, value in slurm.items()}
    settings["jobqueue.slurm.scheduler-options"] = {**slurm["scheduler-options"], **local}
    with dask.config.set(settings):
        with dask_jobqueue.SLURMCluster() as cluster:
            script = cluster.job_script()
            (command,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
            argv = shlex.split(command)
            assert argv[-2:] == ["--preload", "fastworker"], command
            # the job's command line as the batch system runs it, under its own name
            assert argv[argv.index("--name") + 1] == "dummy-name"
            argv[argv.index("--name") + 1] = "w0"
            # a job of 8 cores runs several worker processes (dask-jobqueue's choice),
            # which distributed names w0-0, w0-1, ...
            n = int(argv[argv.index("--nworkers") + 1]) if "--nworkers" in argv else 1
            deployment.names += [f"w0-{i}" for i in range(n)] if n > 1 else ["w0"]
            deployment.processes.start(executable(argv), name="w0")
            deployment.check(cluster.scheduler_address)

    # the Python form passes the same two settings
    tree = ast.parse(recipe("jobqueue-python"))
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "SLURMCluster"]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert kwargs["worker_extra_args"] == slurm["worker-extra-args"]
    assert kwargs["scheduler_options"] == slurm["scheduler-options"]
    assert (kwargs["cores"], kwargs["memory"]) == (slurm["cores"], slurm["memory"])


def _k8s_expand(word: str, env: dict) -> str:
    """Kubernetes' ``$(VAR)`` expansion of container args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), word)


def test_dask_kubernetes_recipe(deployment):
    manifest = yaml.safe_load(recipe("dask-kubernetes"))
    assert manifest["kind"] == "DaskCluster"
    (scheduler,) = manifest["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = manifest["spec"]["worker"]["spec"]["containers"]
    env_of = lambda c: {e["name"]: e["value"] for e in c.get("env", [])}  # noqa: E731
    address = deployment.scheduler(scheduler["args"], env=env_of(scheduler))
    # what the operator adds to each worker's environment
    for _ in range(2):
        name = f"w{len(deployment.names)}"
        env = {**env_of(worker), "DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": name}
        argv = [_k8s_expand(word, env) for word in worker["args"]]
        assert name in argv and not any("$(" in word for word in argv)
        deployment.worker(argv, env=env, name_option=False)
    deployment.check()


def test_kubecluster_recipe(deployment):
    """KubeCluster(env=...): the operator's default commands, with that environment."""
    tree = ast.parse(recipe("kubecluster"))
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "KubeCluster"]
    (env,) = [ast.literal_eval(k.value) for k in call.keywords if k.arg == "env"]
    address = deployment.scheduler(["dask", "scheduler"], env=env)
    for _ in range(2):  # the scheduler's address as the operator gives it
        deployment.worker(["dask", "worker"], env={**env, "DASK_SCHEDULER_ADDRESS": address})
    deployment.check()


def test_helm_recipe(deployment):
    values = yaml.safe_load(recipe("helm"))
    scheduler, worker = values["scheduler"], values["worker"]
    service_port = scheduler.get("servicePort", 8786)
    # the argument lists of the chart's scheduler and worker templates
    scheduler_argv = ["dask-scheduler", f"--port={service_port}", "--dashboard-address=:8787",
                      *scheduler.get("extraArgs", [])]
    env_of = lambda c: {e["name"]: e["value"] for e in c.get("env", [])}  # noqa: E731
    deployment.scheduler(scheduler_argv, env=env_of(scheduler))
    worker_argv = [worker.get("image", {}).get("dask_worker", "dask-worker"),
                   f"my-dask-scheduler:{service_port}", "--no-dashboard",
                   "--dashboard-address", str(worker.get("portDashboard", 8790)),
                   *worker.get("extraArgs", [])]
    for _ in range(2):
        deployment.worker(worker_argv, env=env_of(worker))
    deployment.check()


def test_docker_compose_recipe(deployment):
    compose = yaml.safe_load(recipe("docker-compose"))["services"]
    scheduler, worker = compose["scheduler"], compose["worker"]
    deployment.scheduler(scheduler["command"], env=scheduler.get("environment"))
    replicas = worker.get("deploy", {}).get("replicas", 1)
    assert replicas == 2
    for _ in range(replicas):
        deployment.worker(worker["command"], env=worker.get("environment"))
    deployment.check()


def test_dockerfile_recipe(tmp_path):
    """The Dockerfile's pip line, in a fresh environment of the image's CPython,
    against dist/ (make dist): pip takes that CPython's manylinux wheel."""
    dockerfile = recipe("dockerfile")
    image = re.search(r"^FROM \S+:\S+-py(\d+\.\d+)$", dockerfile, re.M)
    assert image, dockerfile
    pyver = image.group(1)
    (run,) = [ln for ln in dockerfile.splitlines() if ln.startswith("RUN ")]
    (copy,) = [ln for ln in dockerfile.splitlines() if ln.startswith("COPY ")]
    source, target = copy.split()[1:]
    assert source == "dist/"
    dist = ROOT / "dist"
    abi = "cp" + pyver.replace(".", "")
    if not list(dist.glob(f"fastworker-*-{abi}-{abi}-manylinux*.whl")):
        pytest.skip("no dist/ wheel for the image's CPython: run make dist")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "versions_script", ROOT / "scripts" / "test_versions.py")
    versions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(versions)
    python = versions.find_python(pyver)
    if python is None:
        pytest.skip(f"no CPython {pyver} here")
    venv = tmp_path / "image"
    subprocess.run([python, "-m", "venv", venv], check=True)
    pip_line = run.removeprefix("RUN ").split("&&")[0].strip().replace(target, f"{dist}/")
    words = shlex.split(pip_line)
    assert words[:2] == ["pip", "install"] and "--no-index" in words
    # dask and distributed are in the official image already
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c",
                    ROOT / "constraints.txt", "dask", "distributed"], check=True)
    subprocess.run([venv / "bin" / "python", "-m", *words], check=True)
    out = subprocess.run([venv / "bin" / "python", "-c",
                          "import fastworker; print(fastworker.DISTRIBUTED_SUPPORTED)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "True"
