"""Members and tuning candidates through sequential, loky, Ray and Dask backends."""

import json
import os

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main
from ensemble.parallel import ParallelError, plan_jobs, run_jobs


def _maybe_fail(x: int) -> int:
    if x == 2:
        raise ValueError("bad input 2")
    return x * 10


def test_thread_plan_never_oversubscribes():
    for cores in (1, 2, 3, 8, 16):
        for n_jobs in (1, 2, 3, 4, 8, 32):
            for asked in (None, 1, 4, 64):
                plan = plan_jobs(5, n_jobs, "cpu", asked, cores=cores, n_gpus=0)
                assert plan.threads >= 1
                assert plan.n_jobs * plan.threads <= max(cores, plan.n_jobs)
                assert plan.n_jobs <= 5


def test_omp_num_threads_caps_the_cores_a_run_plans_for(monkeypatch):
    from ensemble.parallel import available_cores

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1
    assert plan_jobs(5, 1, "cpu", None, n_gpus=0).threads == 1
    for text in ("", "0", "abc", "\u00b2", str(cpus + 7)):  # unset, not a count, or over the CPUs: the CPUs
        monkeypatch.setenv("OMP_NUM_THREADS", text)
        assert available_cores() == cpus, text


def test_one_gpu_per_concurrent_job():
    plan = plan_jobs(5, 4, "auto", cores=16, n_gpus=4)
    assert plan.devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert plan_jobs(3, 2, "cpu", cores=4, n_gpus=4).devices == ["cpu"] * 3


@pytest.mark.parametrize("backend", ["sequential", "loky"])
def test_failing_job_is_named_and_the_others_finish(backend):
    jobs = [(f"member{x}", {"x": x}) for x in range(4)]
    with pytest.raises(ParallelError) as info:
        run_jobs(_maybe_fail, jobs, backend, n_jobs=2)
    msg = str(info.value)
    assert "member2 failed: ValueError: bad input 2" in msg
    assert "finished and saved: member0, member1, member3" in msg
    assert run_jobs(_maybe_fail, jobs[:2], backend, n_jobs=2) == [0, 10]


def test_missing_backend_package_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray here")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ParallelError, match=r"pip install 'effens\[ray\]'"):
        run_jobs(_maybe_fail, [("a", {"x": 1})], "ray", n_jobs=2)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("par")
    cfg = synth.tiny_config(tiny_data, epochs=2)
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # one thread per job everywhere: the same arithmetic in every backend
    assert (
        main(["train", str(path), "--out", str(root / "sequential"), "-q", "--set", "parallel.threads_per_job=1"]) == 0
    )
    return path, root


@pytest.mark.parametrize("backend", ["loky", "ray", "dask"])
def test_backends_give_the_same_ensemble(reference, backend):
    path, root = reference
    out = root / backend
    assert (
        main(
            [
                "train",
                str(path),
                "--out",
                str(out),
                "--parallel",
                backend,
                "--n-jobs",
                "2",
                "-q",
                "--set",
                "parallel.threads_per_job=1",
            ]
        )
        == 0
    )
    for name in "abc":
        np.testing.assert_array_equal(
            np.load(root / f"sequential/members/{name}/samples.npy"), np.load(out / f"members/{name}/samples.npy")
        )
    seq = json.loads((root / "sequential/report/metrics.json").read_text())
    par = json.loads((out / "report/metrics.json").read_text())
    assert set(par["members"]) == set("abc") and set(par["strategies"]) == set(seq["strategies"])
    for name in "abc":
        for split in ("val", "test"):
            assert par["members"][name][split]["log_loss"] == pytest.approx(
                seq["members"][name][split]["log_loss"], rel=1e-4
            )
    assert par["ensemble"]["test"]["macro_f1"] == pytest.approx(seq["ensemble"]["test"]["macro_f1"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["parallel"]["backend"] == backend


def test_tune_candidates_through_loky(tiny_data, tmp_path):
    cfg = synth.tiny_config(tiny_data, epochs=2)
    cfg["tune"] = {"mode": "features", "ratios": [0.5, 1.0], "replace": [True]}
    cfg["parallel"] = {"backend": "loky", "n_jobs": 2}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["tune", str(path), "--out", str(tmp_path / "t"), "-q"]) == 0
    assert len(list((tmp_path / "t/candidates").glob("*.json"))) == 2
