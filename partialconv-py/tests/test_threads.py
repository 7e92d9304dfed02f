"""Threads share one Inpainter; each call releases the GIL while the core computes."""

import threading
import time

import numpy as np

from conftest import make_holes, make_photo


def test_two_threads_predict_concurrently(inpainter):
    inputs = [
        (make_photo(160, 200, 20), make_holes(160, 200, [(20, 120, 30, 170)])),
        (make_photo(176, 144, 21, channels=4), make_holes(176, 144, [(40, 150, 10, 90)])),
    ]
    expected = [inpainter.predict(img, holes, strategy="original") for img, holes in inputs]
    results = [[], []]
    start = threading.Barrier(2)

    def work(i):
        img, holes = inputs[i]
        start.wait()
        for _ in range(5):
            results[i].append(inpainter.predict(img, holes, strategy="original"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, got in zip(expected, results):
        assert len(got) == 5
        for g in got:
            np.testing.assert_array_equal(g, want)


def test_gil_is_released_during_predict(inpainter):
    """The main thread keeps running Python while another thread is inside `predict`."""
    img = make_photo(512, 512, 22)
    holes = make_holes(512, 512, [(100, 400, 100, 400)])
    window = {}
    done = threading.Event()

    def work():
        window["start"] = time.perf_counter()
        inpainter.predict(img, holes, strategy="original")
        window["end"] = time.perf_counter()
        done.set()

    ticks = []
    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    t.join()
    inside = [x for x in ticks if window["start"] < x < window["end"]]
    # Holding the GIL through the call would leave (almost) no ticks inside it.
    assert len(inside) > 100, (len(inside), window["end"] - window["start"])
