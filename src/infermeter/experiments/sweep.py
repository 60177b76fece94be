"""Sweeps: many profiles and energy runs from one SWEEP.toml, one after another or on Ray.

A sweep file lists jobs, each one `infermeter profile` or `infermeter energy` with its options;
a list value multiplies (models × stacks × hardware × shards):

    [sweep]
    store = "sweep.sqlite"      # every job's runs, merged as the jobs finish
    stores = "sweep-stores"     # each job's own store and log (shared by all nodes under Ray)
    retries = 3                 # Ray: times a job lost with its worker (or killed) runs again

    [defaults]                  # options every job gets unless it sets its own
    validate = 0

    [[jobs]]
    command = "profile"
    model = ["llama-7b", "llama-13b"]
    backend = ["engine", "hf"]
    tp = 1
    prompt-sizes = "1,256,512"   # options as on the command line, without the dashes

Each job runs as its own process (`python -m infermeter COMMAND MODEL ... --store
STORES/NAME.sqlite`, output to STORES/NAME.log), so a job that stops resumes from its store
when it runs again, as any profile does. Without Ray the jobs run one after another here; with
Ray each is a task asking for the GPUs it needs (`gpus`, default its --tp or largest --shards
on a GPU, none with device "cpu"), `cpus` (default 1) and any custom `resources`; a task whose
worker is lost (the process or its node dies) is retried up to `retries` times and resumes
from its store. The jobs' stores are merged into the sweep's store as they finish
(infermeter.store.merge): every run and every point once.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermeter.errors import UserError
from infermeter.store.merge import merge_stores

COMMANDS = ("profile", "energy")
_RESERVED = ("command", "model", "name", "gpus", "cpus", "resources")
RAY_HINT = "pip install 'infermeter[ray]'"


@dataclass(frozen=True)
class Job:
    """One `infermeter COMMAND MODEL --OPTION VALUE ...` of a sweep, with what it asks of Ray."""

    name: str
    command: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # without dashes; True: a bare flag
    gpus: float = 0.0
    cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)

    def argv(self, store: Path) -> list[str]:
        """The job's command line (after `python -m infermeter`)."""
        args = [self.command, self.model]
        for key, value in self.options.items():
            if value is True:
                args.append(f"--{key}")
            elif value is False:
                args.append(f"--no-{key}")
            else:
                args += [f"--{key}", str(value)]
        return [*args, "--store", str(store)]


@dataclass(frozen=True)
class Sweep:
    """A sweep file read: its jobs, the merged store, the jobs' stores' folder, retries."""

    jobs: list[Job]
    store: Path
    stores: Path
    retries: int = 3


@dataclass
class JobResult:
    """How a job ended: its store, exit status, the attempts it took and its log's end."""

    job: Job
    store: Path
    returncode: int | None  # None: it never ran to an end (Ray gave up on it)
    attempts: int = 1
    message: str = ""
    hosts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the job's process exited 0."""
        return self.returncode == 0


def _where(path: Path, index: int) -> str:
    return f"{path}: jobs[{index}]"


def load_sweep(path: str | Path) -> Sweep:
    """Read SWEEP.toml (see the module docstring). Paths in it are relative to the file.
    Raises UserError, in one line naming the file and the job, for what it cannot run."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read sweep file {path}: {error.strerror or error}") from error
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif sys.version_info < (3, 11):  # tomllib is 3.11+ and tomli is not a dependency
            raise UserError(f"sweep file {path}: TOML needs Python 3.11+; write it as JSON")
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as error:  # TOMLDecodeError, JSONDecodeError
        raise UserError(f"{path} is not valid TOML or JSON ({error}); fix the file") from None
    unknown = set(data) - {"sweep", "defaults", "jobs"}
    if unknown:
        raise UserError(f"{path}: unknown table {sorted(unknown)[0]!r}; use sweep, defaults, jobs")
    head = data.get("sweep", {})
    bad = set(head) - {"store", "stores", "retries"}
    if bad:
        raise UserError(
            f"{path}: [sweep] has no key {sorted(bad)[0]!r}; use store, stores, retries"
        )
    base = path.parent
    retries = head.get("retries", 3)
    if not isinstance(retries, int) or retries < 0:
        raise UserError(f"{path}: [sweep] retries must be a whole number >= 0, not {retries!r}")
    defaults = data.get("defaults", {})
    entries = data.get("jobs", [])
    if not entries:
        raise UserError(f'{path}: no [[jobs]]; add one, e.g. command = "profile", model = ...')
    jobs = [job for i, entry in enumerate(entries) for job in _expand(path, i, defaults, entry)]
    seen: set[str] = set()
    for job in jobs:
        if job.name in seen:
            raise UserError(f"{path}: two jobs are named {job.name!r}; give them distinct names")
        seen.add(job.name)
    return Sweep(
        jobs,
        base / str(head.get("store", "sweep.sqlite")),
        base / str(head.get("stores", "sweep-stores")),
        retries,
    )


def _expand(path: Path, index: int, defaults: dict, entry: dict) -> list[Job]:
    where = _where(path, index)
    merged = {**defaults, **entry}
    command = merged.get("command")
    if command not in COMMANDS:
        raise UserError(f"{where}: command must be one of {', '.join(COMMANDS)}, not {command!r}")
    if "model" not in merged:
        raise UserError(f"{where}: no model; give a catalog name or a config.json path")
    axes = {k: v for k, v in merged.items() if isinstance(v, list)}
    if "resources" in axes or any(not v for v in axes.values()):
        raise UserError(f"{where}: a list must hold at least one value (resources is a table)")
    jobs = []
    for values in itertools.product(*axes.values()):
        one = {**merged, **dict(zip(axes, values, strict=True))}
        options = {
            k.replace("_", "-"): v for k, v in one.items() if k not in _RESERVED and k != "store"
        }
        if "store" in one:
            raise UserError(f"{where}: a job's store is set by the sweep ([sweep] stores)")
        for key, value in options.items():
            if not isinstance(value, (str, int, float, bool)):
                raise UserError(f"{where}: option {key} must be a string, number or true/false")
        # A job's name: its own (or command-model), then the values its lists gave it.
        varied = [f"{k}{v}" for k, v in zip(axes, values, strict=True) if k != "model"]
        base = [str(one.get("name") or f"{command}-{one['model']}")]
        if "name" in one and "model" in axes:
            base.append(str(one["model"]))
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(base + varied))
        jobs.append(
            Job(
                name=name,
                command=command,
                model=str(one["model"]),
                options=options,
                gpus=float(one.get("gpus", _gpus(options))),
                cpus=float(one.get("cpus", 1)),
                resources={str(k): float(v) for k, v in dict(one.get("resources", {})).items()},
            )
        )
    return jobs


def _gpus(options: dict[str, Any]) -> int:
    """The GPUs a job needs by its options: none on a CPU, else its tp or largest shards."""
    if str(options.get("device", "auto")) == "cpu" or options.get("backend") == "openai":
        return 0
    shards = str(options.get("shards", "1")).split(",")
    return max([int(options.get("tp", 1)), *(int(s) for s in shards if s.strip())])


def check_options(sweep: Sweep, known: Callable[[str], set[str]]) -> None:
    """Refuse a job option its command does not have; `known(command)` gives the options
    (without dashes) of a command, e.g. from the CLI."""
    for job in sweep.jobs:
        names = known(job.command)
        for key, value in job.options.items():
            flag = f"no-{key}" if value is False else key
            if flag not in names:
                raise UserError(
                    f"job {job.name}: `infermeter {job.command}` has no option --{flag}; see "
                    f"`infermeter {job.command} --help`"
                )


# ---- running a job -------------------------------------------------------------------------


class JobProcessLost(RuntimeError):
    """A job's process was killed by a signal (not a failure of its own): run it again."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The job's process gets SIGTERM when the process that started it dies (a Ray worker
    killed), so a retry never runs beside an orphan writing the same store."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_job(
    job: Job, stores: Path, node: str | None = None, sweep_id: str | None = None
) -> JobResult:
    """Run `job` to its end in a process of its own, output to STORES/NAME.log; each attempt
    is recorded in STORES/NAME.attempts (host, this process's pid, Ray `node` id, start, the
    sweep invocation). The result counts the attempts of this invocation (`sweep_id`; all
    when None): a sweep run again over finished jobs is not a retry."""
    stores.mkdir(parents=True, exist_ok=True)
    store, log = stores / f"{job.name}.sqlite", stores / f"{job.name}.log"
    attempts = stores / f"{job.name}.attempts"
    with attempts.open("a") as out:
        here = {"host": socket.gethostname(), "pid": os.getpid(), "node": node, "t": time.time(),
                "sweep": sweep_id}  # fmt: skip
        out.write(json.dumps(here))
        out.write("\n")
    cmd = [sys.executable, "-m", "infermeter", *job.argv(store)]
    with log.open("a") as out:
        out.write(f"$ infermeter {' '.join(job.argv(store))}\n")
        out.flush()
        code = subprocess.call(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    tries = _tries(attempts, sweep_id)
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in tail if line.startswith("error:")]
    return JobResult(
        job,
        store,
        code,
        len(tries),
        (errors[-1] if errors else tail[-1] if tail else "") if code else "",
        sorted({t["host"] for t in tries}),
    )


def _tries(attempts: Path, sweep_id: str | None) -> list[dict[str, Any]]:
    """The attempts recorded in `attempts` by sweep invocation `sweep_id` (all when None)."""
    if not attempts.exists():
        return []
    tries = [json.loads(line) for line in attempts.read_text().splitlines() if line.strip()]
    return [t for t in tries if sweep_id is None or t.get("sweep") == sweep_id]


def _ray_job(job: Job, stores: str, sweep_id: str | None = None) -> JobResult:
    """The Ray task: run_job, and a job process killed by a signal raises JobProcessLost so
    that Ray runs it again (a lost worker is retried by Ray itself)."""
    import ray

    result = run_job(job, Path(stores), ray.get_runtime_context().get_node_id(), sweep_id)
    if result.returncode is not None and result.returncode < 0:
        raise JobProcessLost(f"job {job.name}: its process was killed ({-result.returncode})")
    return result


# ---- running a sweep -----------------------------------------------------------------------


def _merge(sweep: Sweep, result: JobResult) -> JobResult:
    if result.store.is_file():
        merge_stores(sweep.store, [result.store])
    return result


def run_sweep(
    sweep: Sweep,
    ray_address: str | None = None,
    use_ray: bool = False,
    on_done: Callable[[JobResult], None] | None = None,
) -> list[JobResult]:
    """Run every job of `sweep` (one after another, or as Ray tasks with `use_ray`, on the
    cluster at `ray_address` or a local one), merging each job's store into the sweep's as
    it finishes; `on_done` gets each result then. Results in the file's order. Raises
    UserError where Ray is asked for but not installed or not reachable."""
    sweep.stores.mkdir(parents=True, exist_ok=True)
    sweep_id = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    if not use_ray:
        results = []
        for job in sweep.jobs:
            result = _merge(sweep, run_job(job, sweep.stores, sweep_id=sweep_id))
            if on_done:
                on_done(result)
            results.append(result)
        return results
    return _run_on_ray(sweep, ray_address, on_done, sweep_id)


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise UserError where nothing answers at a HOST:PORT Ray address (ray.init itself
    retries for minutes, printing only its own warnings). Other forms (auto, ray://, none) are
    left to Ray."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as error:
        raise UserError(
            f"no Ray cluster answers at {address} ({error}); start one with `ray start --head "
            "--port PORT` and pass --ray HOST:PORT"
        ) from error


def _run_on_ray(
    sweep: Sweep,
    address: str | None,
    on_done: Callable[[JobResult], None] | None,
    sweep_id: str,
) -> list[JobResult]:
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError as error:
        raise UserError(f"--ray needs Ray ({error}); {RAY_HINT}") from error
    options: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if not address:
        options["include_dashboard"] = False
    elif address.split(":")[0].startswith("127."):
        # A cluster on this host's loopback: this driver's node is there too.
        options["_node_ip_address"] = address.split(":")[0]
    try:
        ray.init(address=address or None, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(
            f"cannot reach a Ray cluster at {address or 'RAY_ADDRESS or a new local one'} "
            f"({str(error).splitlines()[0]}); start one with `ray start --head` and pass "
            "--ray HOST:PORT"
        ) from error
    try:
        # A fresh worker process per job: no state carried from one job to the next.
        task = ray.remote(max_calls=1)(_ray_job)
        pending: dict[Any, Job] = {}
        for job in sweep.jobs:
            ref = task.options(
                name=job.name,
                num_cpus=job.cpus,
                num_gpus=job.gpus,
                resources=job.resources or None,
                max_retries=sweep.retries,
                retry_exceptions=[JobProcessLost],
            ).remote(job, str(sweep.stores.resolve()), sweep_id)
            pending[ref] = job
        done: dict[str, JobResult] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as error:  # retries spent: the worker kept being lost
                    result = _gave_up(job, sweep.stores, error, sweep_id)
                done[job.name] = _merge(sweep, result)
                if on_done:
                    on_done(done[job.name])
        return [done[job.name] for job in sweep.jobs]
    finally:
        ray.shutdown()


def _gave_up(job: Job, stores: Path, error: BaseException, sweep_id: str) -> JobResult:
    tries = len(_tries(stores / f"{job.name}.attempts", sweep_id))
    why = str(error).strip().splitlines()
    return JobResult(job, stores / f"{job.name}.sqlite", None, tries, why[0] if why else "lost")


def failures_line(results: Iterable[JobResult], sweep_file: str) -> str | None:
    """One line on the jobs that failed and how to retry them; None when all ended well."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    named = "; ".join(
        f"{r.job.name} ({'exit ' + str(r.returncode) if r.returncode is not None else 'lost'}"
        f"{': ' + r.message if r.message else ''})"
        for r in failed
    )
    return (
        f"{len(failed)} job(s) failed: {named}; their logs are in the stores folder; rerun "
        f"`infermeter sweep {sweep_file}` to retry them (finished jobs resume at once)"
    )
