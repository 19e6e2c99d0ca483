"""Augmentation draws from private per-item streams: reproducible whatever other threads do."""

import random
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from ensemble.config import TrainConfig
from members.models import InputConfig
from members.streams import HorizontalFlip, item_streams
from members.transforms import SampleDataset, train_transform

INPUTS = InputConfig(
    image_size=24, crop_pct=0.875, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)


def _draws() -> tuple:
    return random.random(), random.uniform(0, 9), int(np.random.choice(100)), float(np.random.rand())


def _dataset(n: int = 6) -> SampleDataset:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(n)]
    tf = train_transform(INPUTS, TrainConfig(augment="rand-m9-mstd0.5"))
    return SampleDataset(images, np.arange(n) % 3, np.array([0, 1, 1, 2, 3, 5]), tf, seed=7)


def test_same_key_same_draws_and_the_global_streams_are_untouched():
    random.seed(3)
    np.random.seed(3)
    py_state, np_state = random.getstate(), np.random.get_state()
    with item_streams(7, 0, 1):
        first = _draws()
    with item_streams(7, 0, 1):
        again = _draws()
    with item_streams(7, 1, 1):
        other = _draws()
    assert first == again and first != other
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_other_threads_keep_the_global_streams():
    seen = {}

    def elsewhere():
        random.seed(5)
        np.random.seed(5)
        seen["draws"] = (random.random(), float(np.random.rand()))

    with item_streams(1, 2, 3):
        inside = random.random()
        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        assert random.random() != inside  # the private stream moved on, not restarted
    assert seen["draws"] == (random.Random(5).random(), float(np.random.RandomState(5).rand()))


def test_items_do_not_depend_on_a_thread_drawing_from_the_global_generators():
    ds = _dataset()
    quiet = [ds[i][0] for i in range(len(ds))]
    stop = threading.Event()

    def noise():
        while not stop.is_set():
            random.random()
            np.random.rand()
            torch.rand(1)

    t = threading.Thread(target=noise, daemon=True)
    t.start()
    try:
        noisy = [ds[i][0] for i in range(len(ds))]
    finally:
        stop.set()
        t.join()
    for a, b in zip(quiet, noisy):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(quiet[1], quiet[2])  # a repeated image is augmented anew
    ds.epoch = 1
    assert not torch.equal(ds[0][0], quiet[0])  # and anew every epoch


def test_items_do_not_depend_on_loader_workers():
    ds = _dataset()

    def batches(workers: int) -> torch.Tensor:
        # spawned, not forked: a fork of this test process, which may hold OpenVINO's and
        # torch's thread pools from earlier tests, once deadlocked at exit (futex) and hung pytest
        loader = torch.utils.data.DataLoader(
            ds, batch_size=3, shuffle=False, num_workers=workers, multiprocessing_context="spawn" if workers else None
        )
        return torch.cat([x for x, _ in loader])

    torch.testing.assert_close(batches(0), batches(2), rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip(p):
    img = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(2, 6).repeat(3).reshape(2, 6, 3))
    out = np.asarray(HorizontalFlip(p)(img))
    expected = np.asarray(img)[:, ::-1] if p else np.asarray(img)
    np.testing.assert_array_equal(out, expected)
