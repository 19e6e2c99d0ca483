"""Independent jobs (members, tuning candidates) through joblib: in process, local
processes (loky), or an existing/local Ray or Dask cluster via their joblib backends.

Each job writes its own files, so a failing job loses nothing of the others: failures
are collected and reported together, naming each job, after the rest have finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import traceback
from typing import Any, Callable, Iterator, Sequence

from members.errors import EffensError

log = logging.getLogger(__name__)

EXTRAS = {"ray": "ray", "dask": "dask"}


class ParallelError(EffensError, RuntimeError):
    """A backend is unavailable, or jobs failed (each named in the message)."""


def available_cores() -> int:
    """The cores this process may use: the CPUs it may run on, capped by ``OMP_NUM_THREADS``
    when that is set (a user's or a scheduler's cap, as the runtimes read it)."""
    from members.runtimes import omp_num_threads

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, omp_num_threads() or cpus)


@dataclasses.dataclass
class JobPlan:
    n_jobs: int
    threads: int
    devices: list[str]

    def describe(self) -> str:
        devs = sorted(set(self.devices))
        return (
            f"{self.n_jobs} job(s) at once x {self.threads} thread(s) each "
            f"({available_cores()} cores), device(s): {', '.join(devs)}"
        )


def plan_jobs(
    n_tasks: int,
    n_jobs: int,
    device: str = "auto",
    threads_per_job: int | None = None,
    cores: int | None = None,
    n_gpus: int | None = None,
) -> JobPlan:
    """Threads per job so that jobs x threads <= cores; one GPU per concurrent job.

    With ``device: auto`` and several GPUs, task i runs on ``cuda:(i mod GPUs)``.
    """
    import torch

    cores = cores or available_cores()
    n_jobs = max(1, min(n_jobs, max(1, n_tasks)))
    fair = max(1, cores // n_jobs)
    threads = min(threads_per_job, fair) if threads_per_job else fair
    if threads_per_job and threads_per_job > fair:
        log.warning(
            "threads_per_job=%d would oversubscribe %d cores with %d jobs: using %d",
            threads_per_job,
            cores,
            n_jobs,
            threads,
        )
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    if device == "auto" and n_gpus > 1:
        devices = [f"cuda:{i % n_gpus}" for i in range(n_tasks)]
    else:
        devices = [device] * n_tasks
    return JobPlan(n_jobs=n_jobs, threads=threads, devices=devices)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: as they are), then restore them."""
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def backend(name: str, n_jobs: int, threads: int, address: str | None = None) -> Iterator[str]:
    """Set up a joblib backend (starting a local Ray or Dask cluster when no address)."""
    if name in ("sequential", "loky", "threading"):
        yield name
        return
    if name == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise ParallelError("backend `ray` needs Ray: pip install 'effens[ray]'") from None
        started = not ray.is_initialized()
        if started:
            import signal

            sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; effens's one-line exit stays
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=n_jobs * threads, include_dashboard=False, log_to_driver=False)
            if callable(sigterm):
                signal.signal(signal.SIGTERM, sigterm)
        register_ray()
        try:
            yield "ray"
        finally:
            if started:
                ray.shutdown()
        return
    if name == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise ParallelError("backend `dask` needs Dask: pip install 'effens[dask]'") from None
        cluster = None
        if address:
            client = Client(address)
        else:
            cluster = LocalCluster(
                n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
            )
            client = Client(cluster)
        try:
            yield "dask"
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    raise ParallelError(f"unknown parallel backend {name!r}; use sequential, loky, ray or dask")


def _guarded(fn: Callable, name: str, kwargs: dict) -> Any:
    """Run one job; an exception becomes a record instead of cancelling the others."""
    try:
        return fn(**kwargs)
    except Exception as exc:  # reported with the job's name by run_jobs
        return {"__job_error__": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), "job": name}


def run_jobs(
    fn: Callable,
    jobs: Sequence[tuple[str, dict]],
    backend_name: str = "sequential",
    n_jobs: int = 1,
    threads: int = 1,
    address: str | None = None,
) -> list[Any]:
    """``[fn(**kwargs) for name, kwargs in jobs]`` through joblib; failures raise together."""
    from joblib import Parallel, delayed, parallel_config

    if not jobs:
        return []
    name = "sequential" if n_jobs == 1 and backend_name in ("sequential", "loky") else backend_name
    with backend(name, n_jobs, threads, address) as be:
        with parallel_config(backend=be, n_jobs=n_jobs if be != "sequential" else 1):
            results = Parallel()(delayed(_guarded)(fn, job, kwargs) for job, kwargs in jobs)
    failed = [r for r in results if isinstance(r, dict) and "__job_error__" in r]
    for r in failed:
        log.error("job %s failed:\n%s", r["job"], r["traceback"])
    if failed:
        done = [job for (job, _), r in zip(jobs, results) if r not in failed]
        raise ParallelError(
            "; ".join(f"{r['job']} failed: {r['__job_error__']}" for r in failed)
            + (f" (finished and saved: {', '.join(done)})" if done else "")
        )
    return results
