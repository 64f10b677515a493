"""The LiteRT fast path against plain Keras, its cache, and the streaming helper."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.inference import Predictor, predict_stream  # noqa: E402
from neurorg_core.model import file_sha256  # noqa: E402

S = 32


def _crops(n: int, seed: int = 0) -> np.ndarray:
    scale = np.linspace(0.2, 1.0, n, dtype=np.float32)[:, None, None, None]
    return np.random.default_rng(seed).random((n, S, S, 3), dtype=np.float32) * scale


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, save_tiny):
    """Two single-channel members (microglia, neuron) of the session's tiny models, with heads
    that spread outputs.

    (3-channel members go through the same fast path in ``test_bundle_files`` and the pipeline
    tests.)"""
    return save_tiny(tmp_path_factory.mktemp("bundle") / "b", ["microglia", "neuron"], kind="single_channel")


@pytest.fixture(scope="module")
def fast(bundle):
    return Predictor(bundle, batch_size=8)


@pytest.fixture(scope="module")
def reference(bundle):
    return Predictor(bundle, backend="keras")


def test_fast_path_matches_keras_within_1e_4(fast, reference):
    x = _crops(21)                                 # not a multiple of the batch size: padding
    p_fast, p_ref = fast.predict(x), reference.predict(x)
    assert p_fast.shape == p_ref.shape == (2, 21, 6)
    assert np.abs(p_fast - p_ref).max() < 1e-4
    assert p_ref.std(1).max() > 1e-3               # the comparison is not between constants
    np.testing.assert_allclose(p_fast.sum(-1), 1.0, atol=1e-5)
    assert np.abs(p_fast[0] - p_fast[1]).max() > 1e-3   # members are different models


def test_fast_path_gives_the_same_answer_for_any_batching(fast, bundle):
    x = _crops(9, seed=3)
    whole = fast.predict(x)
    one_thread = Predictor(bundle, threads=1, batch_size=4)
    np.testing.assert_allclose(one_thread.predict(x), whole, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([fast.predict(x[:4]), fast.predict(x[4:])], axis=1), whole,
                               atol=1e-6)
    assert fast.predict(x[:0]).shape == (2, 0, 6)


def test_conversion_is_cached_by_member_id_and_weights_hash_outside_the_bundle(fast, bundle,
                                                                              litert_conversion_cache):
    """The bundle ships no LiteRT files, so each member is converted once into the conversion
    cache (never into the bundle folder), with the hash of its bytes recorded beside it."""
    assert sorted(p.name for p in fast.litert_files) == sorted(
        f"{m.id}-{m.weights_sha256[:16]}.tflite" for m in bundle.members)
    assert {p.parent for p in fast.litert_files} == {litert_conversion_cache}
    for path in fast.litert_files:
        assert path.with_suffix(".sha256").read_text().strip() == file_sha256(path)
    assert sorted(p.name for p in bundle.path.iterdir()) == sorted(
        ["card.json", *(m.weights_path.name for m in bundle.members)])   # nothing written there
    stamps = {p: p.stat().st_mtime_ns for p in fast.litert_files}
    again = Predictor(bundle)                      # a second predictor reuses the files
    assert again.litert_files == fast.litert_files
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_damaged_cached_conversion_is_converted_again(fast, bundle, tmp_path):
    import shutil

    for path in fast.litert_files:                 # start from the session's conversions
        shutil.copy(path, tmp_path)
        shutil.copy(path.with_suffix(".sha256"), tmp_path)
    first = Predictor(bundle, cache_dir=tmp_path, threads=1)
    assert [p.parent for p in first.litert_files] == [tmp_path, tmp_path]
    x = _crops(5)
    want = first.predict(x)
    a, b = first.litert_files
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())                  # the other member's conversion under a's name
    again = Predictor(bundle, cache_dir=tmp_path, threads=1)
    np.testing.assert_allclose(again.predict(x), want, atol=1e-6)
    assert file_sha256(a) == a.with_suffix(".sha256").read_text().strip()   # re-converted, re-recorded
    assert len(a.read_bytes()) == pytest.approx(len(a_bytes), rel=0.01)


def test_predict_rejects_wrong_crop_shapes(fast):
    with pytest.raises(NeuroRGError, match=r"expected \(n, 32, 32, 3\)"):
        fast.predict(np.zeros((2, 16, 16, 3), np.float32))


def test_predict_stream_keeps_order_and_overlaps_reading(fast, bundle):
    import threading

    reader_threads = set()
    batches = [(f"k{i}", _crops(3 + i, seed=i)) for i in range(4)]

    def source():
        for key, x in batches:
            reader_threads.add(threading.current_thread().name)
            yield key, x

    out = list(predict_stream(source(), bundle, predictor=fast))
    assert [k for k, _ in out] == ["k0", "k1", "k2", "k3"]
    for (key, x), (_, probs) in zip(batches, out):
        np.testing.assert_allclose(probs, fast.predict(x), atol=1e-6)
    assert reader_threads == {"neurorg-reader"}   # consumed off the calling thread


def test_predict_stream_reraises_the_readers_error(fast, bundle):
    def source():
        yield "a", _crops(2)
        raise NeuroRGError("field A02 unreadable")

    stream = predict_stream(source(), bundle, predictor=fast)
    assert next(stream)[0] == "a"
    with pytest.raises(NeuroRGError, match="A02 unreadable"):
        next(stream)


def test_predict_stream_stops_its_reader_when_closed_early(fast, bundle):
    import threading

    def endless():
        i = 0
        while True:
            i += 1
            yield i, _crops(1)

    stream = predict_stream(endless(), bundle, predictor=fast)
    assert next(stream)[0] == 1
    stream.close()
    assert not any(t.name == "neurorg-reader" and t.is_alive() for t in threading.enumerate())


def test_submitted_batches_run_together_and_come_back_right(fast):
    batches = [_crops(5 + i, seed=20 + i) for i in range(4)]
    expected = [fast.predict(x) for x in batches]
    pending = [fast.submit(x) for x in batches]          # all queued before any result is read
    for p, want in zip(reversed(pending), reversed(expected)):
        np.testing.assert_allclose(p.result(), want, atol=1e-6)


def test_one_predictor_serves_several_threads(fast):
    import threading

    inputs = [_crops(7, seed=40 + i) for i in range(4)]
    expected = [fast.predict(x) for x in inputs]
    got: dict[int, np.ndarray] = {}

    def call(i):
        for _ in range(3):
            got[i] = fast.predict(inputs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def _litert_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("neurorg-litert") and t.is_alive()]


def test_workers_stop_on_close_and_with_the_predictor(bundle):
    import gc

    before = len(_litert_threads())
    pred = Predictor(bundle, batch_size=8)
    x = _crops(3)
    first = pred.predict(x)
    assert len(_litert_threads()) == before + 2
    pred.close()
    assert len(_litert_threads()) == before
    np.testing.assert_allclose(pred.predict(x), first, atol=1e-6)   # a later call restarts them
    del pred
    gc.collect()
    assert len(_litert_threads()) == before


def test_a_predictor_cache_reuses_per_member_set_and_stays_within_its_bytes(bundle):
    """The cache belongs to its caller and holds at most its budget of loaded models: with room for
    one predictor, asking for another closes and drops the first."""
    import dataclasses

    from neurorg_core.inference import PredictorCache

    probe = Predictor(bundle)
    one_size = probe.nbytes
    probe.close()
    assert one_size == 2 * sum(p.stat().st_size for p in probe.litert_files)   # 2 workers, own copies
    cache = PredictorCache(max_bytes=one_size)
    a = cache.predictor(bundle)
    assert cache.predictor(bundle) is a
    from_a = a.predict(_crops(2))
    workers = list(a._threads)
    assert len(workers) == 2 and all(t.is_alive() for t in workers)
    one = dataclasses.replace(bundle, members=bundle.members[:1])
    b = cache.predictor(one)
    assert b is not a and b.n_members == 1
    stats = cache.stats()
    assert stats.entries == 1 and stats.evictions == 1 and stats.bytes == b.nbytes <= one_size
    assert not any(t.is_alive() for t in workers)            # the dropped one's workers stopped
    np.testing.assert_allclose(b.predict(_crops(2)), from_a[:1], atol=1e-6)
    cache.clear()
    assert cache.stats().bytes == 0


def test_a_failing_interpreter_is_reported_and_the_workers_go_on(bundle):
    pred = Predictor(bundle, batch_size=8, threads=1)
    x = _crops(4)
    good = pred.predict(x)
    worker = pred._workers[0]
    real = worker.interpreters[1]

    class Broken:
        def __getattr__(self, name):
            return getattr(real, name)

        def invoke(self):
            raise MemoryError("out of memory in the delegate")

    worker.interpreters[1] = Broken()
    with pytest.raises(NeuroRGError, match="LiteRT inference failed .*out of memory"):
        pred.predict(x)
    worker.interpreters[1] = real
    np.testing.assert_allclose(pred.predict(x), good, atol=1e-6)   # the same worker thread goes on
    pred.close()
