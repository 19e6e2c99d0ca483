import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# pytest-xdist runs one worker per core, and each worker's torch (and every effens process it
# starts) would take every core: n x n threads. Each worker gets its share, unless set by hand.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
from members.runtimes import omp_num_threads  # noqa: E402

if _WORKERS > 1 and omp_num_threads() is None:
    from ensemble.parallel import available_cores

    os.environ["OMP_NUM_THREADS"] = str(max(1, available_cores() // _WORKERS))
    if "torch" in sys.modules:  # loaded before this file (a plugin): its pool is already sized
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import synth  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A generated three-class image data set (train/val/test folders of 40 px PNGs)."""
    return synth.make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """(config path, run folder) of a three-member tiny ensemble trained once per session."""
    import yaml

    from ensemble.cli import main

    root = tmp_path_factory.mktemp("run")
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(synth.tiny_config(tiny_data)))
    out = root / "run"
    assert main(["train", str(cfg_path), "--out", str(out)]) == 0
    return cfg_path, out


@pytest.fixture
def fails(capsys, caplog):
    """``fails(code, *needles)``: asserts that an effens command ended as a user's mistake
    should, exit code 2 and one message without a traceback holding each needle; returns
    the captured output and log."""

    def check(code: int, *needles: str) -> str:
        out = capsys.readouterr()
        text = caplog.text + out.err + out.out
        assert code == 2, text[-2000:]
        assert "Traceback" not in text
        for needle in needles:
            assert needle in text, (needle, text[-2000:])
        return text

    return check
