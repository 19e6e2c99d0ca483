"""Sharing a CPU (issue #41, item 13): effens's OpenMP threads sleep when they wait, unless
the user chose otherwise; the figures are in scripts/benchmark_shared_cpu.py."""

import os
import subprocess
import sys

import pytest

CODE = (
    "import ensemble, torch, os; torch.ones(4).sum(); "
    "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
)


def _run(env: dict) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", CODE], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_waiting_threads_sleep_in_every_effens_process_and_its_children():
    assert _run({}) == "PASSIVE None"
    child = (
        "import ensemble, subprocess, sys; "
        "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"OMP_WAIT_POLICY\"])'], "
        "capture_output=True, text=True).stdout.strip())"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", child], env=clean, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE"  # loky, Ray and Dask workers inherit it


@pytest.mark.parametrize(
    "env, expected", [({"OMP_WAIT_POLICY": "active"}, "active None"), ({"GOMP_SPINCOUNT": "300000"}, "None 300000")]
)
def test_a_users_own_setting_wins(env, expected):
    assert _run(env) == expected
