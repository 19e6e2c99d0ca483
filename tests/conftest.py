import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import synth  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A generated three-class image data set (train/val/test folders of 40 px PNGs)."""
    return synth.make_dataset(tmp_path_factory.mktemp("tiny"))
