import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
