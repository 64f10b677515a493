"""Batched prediction for a model bundle: the LiteRT fast path and the streaming helper.

Size (~590 lines): the LiteRT conversion, its verification against the card's hashes and the
predictors that run it belong together (a converted file is never used unchecked); the streaming
helper and the predictor cache are short.

``Predictor`` runs every member of a bundle on a batch of crops and returns class probabilities
shaped (n_members, n_crops, 6). Its default backend runs each member as a float32 LiteRT
flatbuffer with the XNNPACK CPU delegate.

Which LiteRT file runs (``member_litert``): the bundle's own ``litert/<member id>.tflite`` when
its SHA-256 is the one recorded in ``card.json`` (``convert_bundle`` puts them there); otherwise
the member is converted from its verified weights, once, into the conversion cache
(``conversion_cache_dir()``: ``NEURORG_LITERT_CACHE``, ``<data dir>/cache/litert``, or the
user's cache folder), keyed by member id + weights hash, with the hash of the converted bytes
recorded beside it. A ``.tflite`` is never trusted by its name, and the bundle folder is never
written while scoring, so a bundle may sit in a read-only folder.

On a 2-core machine the fastest arrangement measured was *one thread per
interpreter and one interpreter per core*: (member, chunk) work items go into one queue that
``threads`` long-lived worker threads take from, each owning its own interpreter per member
(``invoke`` releases the GIL). Probabilities match ``keras.Model.predict`` within 1e-6 (float32
throughout; no quantisation). ``backend="keras"`` runs the Keras models on the Keras backend's
device in fixed-size batches (``kerasrun.KerasRunner``; float32 or bf16), the GPU path;
``backend="auto"`` (the default) picks Keras when the Keras backend sees a GPU, LiteRT otherwise
(``devices.resolve_backend``). A ``PredictorCache`` (owned by its caller, bounded in bytes) keeps the predictors of
recently used bundles, so a server scoring plate after plate does not rebuild interpreters.

``predict_stream`` overlaps reading / preprocessing (a background thread consuming the caller's
iterable) with inference, and keeps the next batch queued while the caller handles a result.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import queue
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from neurorg_core.cache import BoundedCache
from neurorg_core.config import Config, load_config
from neurorg_core.devices import (BACKENDS, AcceleratorQuery, Backend, Precision, accelerator_batch_size,
                                  resolve_backend, visible_accelerators)
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import FILES, LITERT_PREFIX, Bundle, Member, load_member_model, record_files
from neurorg_core.schema import N_CLASSES

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "Predictor", "PredictorCache", "convert_bundle", "predict_stream"]
LITERT_DIR = LITERT_PREFIX.rstrip("/")


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neurorg" / "litert"


def _why_unwritable(folder: Path) -> str | None:
    """None when a file can be created in ``folder`` (made if needed), else the reason.

    It really creates (and removes) a file: permission bits do not stop root, a read-only
    filesystem does, and ``os.access`` would not tell them apart."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def conversion_cache_dir(config: Config | None = None) -> Path:
    """The folder where members converted at scoring time are cached.

    ``config.litert_cache_dir`` (``NEURORG_LITERT_CACHE``, default ``<data dir>/cache/litert``)
    if it can be written, else the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``,
    then ``neurorg/litert``). Never the bundle folder: a bundle may be read-only, and a file
    there is only trusted when its hash is on the card.

    Raises
    ------
    NeuroRGError
        If neither folder can be written (the message lists both and why).
    """
    cfg = config if config is not None else load_config()
    tried = []
    for folder in (cfg.litert_cache_dir, _user_cache_dir()):
        reason = _why_unwritable(folder)
        if reason is None:
            return folder
        tried.append(f"{folder} ({reason})")
        log.info("cannot cache LiteRT conversions in %s (%s)", folder, reason)
    raise NeuroRGError("no writable folder for converted LiteRT models; tried " + "; ".join(tried)
                       + ". Set NEURORG_LITERT_CACHE to a writable folder")


def _convert(member: Member) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    model = load_member_model(member)   # the weights were verified against the card on load
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _cached_conversion(member: Member, cache_dir: Path) -> tuple[Path, bytes]:
    """A member's conversion in the cache: ``<member id>-<weights hash>.tflite`` beside a
    ``.sha256`` record of its bytes, written when it was converted. A file whose bytes do not
    match its record (replaced, swapped, half-written) is converted again."""
    stem = f"{member.id}-{member.weights_sha256[:16]}" if member.weights_sha256 else member.id
    path = cache_dir / f"{stem}.tflite"
    record = cache_dir / f"{stem}.sha256"
    if path.is_file() and record.is_file():
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() == record.read_text().strip():
            return path, blob
        log.warning("%s does not match its recorded hash; converting member %s again", path, member.name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting member %s (%s) to LiteRT (once; cached in %s)", member.name, member.id, cache_dir)
    blob = _convert(member)
    _write_atomically(path, blob)
    _write_atomically(record, (hashlib.sha256(blob).hexdigest() + "\n").encode())
    return path, blob

BATCH_PIXELS = 16 * 256 * 256
"""Input pixels per default batch: 16 crops up to 256 px, fewer for larger inputs (a 1200 px
EfficientNet-B5, the study's, runs one crop per call: at 16 its activations would need tens of GB
per interpreter)."""


def default_batch_size(input_size: int) -> int:
    """Crops per interpreter call for a model input of ``input_size`` px: 16 up to 256 px, then
    fewer so a batch holds about ``BATCH_PIXELS`` input pixels (1 for 1200 px)."""
    return int(max(1, min(16, BATCH_PIXELS // (int(input_size) ** 2))))


def convert_member(member: Member, cache_dir: str | Path) -> Path:
    """Convert one member to a float32 LiteRT flatbuffer, once; return the cached file.

    The file is keyed by the member's content id and weights hash, and its bytes are checked
    against the hash recorded when it was written. Conversion takes ~10-30 s per member on 2 cores.
    """
    return _cached_conversion(member, Path(cache_dir))[0]


def member_litert(member: Member, bundle: Bundle, cache_dir: str | Path | None = None) -> tuple[Path, bytes]:
    """The verified LiteRT model of one member: (file, bytes).

    The bundle's own ``litert/<member id>.tflite`` is used only when its SHA-256 matches the one
    recorded in ``card.json``. A file that does not match (e.g. swapped with another member's),
    or whose hash the card does not record, is never trusted by its name: the member is converted
    from its verified weights into the conversion cache (``cache_dir``, default
    ``conversion_cache_dir()``) instead. The bytes returned are the bytes that were checked.
    """
    rel = f"{LITERT_PREFIX}{member.id}.tflite"
    shipped = bundle.path / rel
    recorded = (bundle.card.get(FILES) or {}).get(rel)
    if shipped.is_file():
        blob = shipped.read_bytes()
        if recorded is not None and hashlib.sha256(blob).hexdigest() == recorded:
            return shipped, blob
        if recorded is not None:
            log.warning("%s does not match the SHA-256 recorded in card.json; member %s is converted "
                        "again from its verified weights", shipped, member.name)
        else:
            log.info("%s has no SHA-256 in card.json, so it is not used; member %s is converted from "
                     "its verified weights (once, cached)", shipped, member.name)
    elif recorded is not None:
        log.warning("%s is recorded in card.json but missing; member %s is converted again",
                    shipped, member.name)
    folder = Path(cache_dir) if cache_dir is not None else conversion_cache_dir()
    return _cached_conversion(member, folder)


_PROBE_CROPS = 24
LITERT_TOLERANCE = 1e-4
"""Largest |LiteRT - Keras| probability accepted when checking a conversion (measured: ~5e-6)."""


def _probe(input_size: int) -> np.ndarray:
    """Fixed crops (noise at several brightness levels) on which every conversion is checked."""
    scale = np.linspace(0.05, 1.0, _PROBE_CROPS, dtype=np.float32)[:, None, None, None]
    return np.random.default_rng(12345).random((_PROBE_CROPS, input_size, input_size, 3),
                                               dtype=np.float32) * scale


def _run_litert(blob: bytes, crops: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob, num_threads=1)
    detail = it.get_input_details()[0]
    it.resize_tensor_input(detail["index"], list(crops.shape))
    it.allocate_tensors()
    it.set_tensor(detail["index"], crops)
    it.invoke()
    return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


def convert_bundle(bundle: Bundle, *, tolerance: float = LITERT_TOLERANCE) -> Bundle:
    """Put each member's LiteRT file inside the bundle and record its SHA-256 on the card.

    For each member, ``litert/<member id>.tflite`` is kept if it already agrees with the member's
    Keras model (built from the verified weights) within ``tolerance`` on fixed probe crops;
    otherwise the member's conversion (from the conversion cache, converted there first if
    needed) is checked the same way and copied in. Then the card's
    ``files`` section records every file's hash (``model.record_files``): member ids stay, the
    bundle id changes. Run it once after training (``python -m neurorg_core convert-bundle``),
    so that scoring never converts and the bundle can live in a read-only folder.

    Returns
    -------
    Bundle
        The bundle reloaded with its new card.

    Raises
    ------
    NeuroRGError
        If the bundle folder cannot be written, or a fresh conversion disagrees with Keras.
    """
    reason = _why_unwritable(bundle.path / LITERT_PREFIX.rstrip("/"))
    if reason is not None:
        raise NeuroRGError(f"cannot write the bundle's {LITERT_PREFIX} folder ({reason})", path=bundle.path)
    rels = []
    for member in bundle.members:
        rel = f"{LITERT_PREFIX}{member.id}.tflite"
        path = bundle.path / rel
        x = _probe(member.input_size)
        expected = np.asarray(load_member_model(member).predict(x, batch_size=8, verbose=0))
        if path.is_file():
            diff = float(np.abs(_run_litert(path.read_bytes(), x) - expected).max())
            if diff <= tolerance:
                log.info("%s agrees with member %s's weights (max |diff| %.1e); kept", rel, member.name, diff)
                rels.append(rel)
                continue
            log.warning("%s disagrees with member %s's weights (max |diff| %.3g); converting again",
                        rel, member.name, diff)
        _, blob = _cached_conversion(member, conversion_cache_dir())   # converts once, if not cached
        diff = float(np.abs(_run_litert(blob, x) - expected).max())
        if diff > tolerance:
            raise NeuroRGError(f"the LiteRT conversion of member {member.name} differs from Keras by "
                               f"{diff:.3g} (> {tolerance:g})", path=path)
        _write_atomically(path, blob)
        log.info("converted member %s into %s (max |diff| vs Keras %.1e)", member.name, rel, diff)
        rels.append(rel)
    return record_files(bundle, rels)


@dataclass
class _Worker:
    interpreters: list[Any]   # one per member
    input_index: list[int]    # per member (tensor indices differ between graphs)
    output_index: list[int]


class Pending:
    """One ``Predictor.submit`` call in flight; ``result()`` waits for it."""

    def __init__(self, out: np.ndarray, n_items: int, bundle_id: str) -> None:
        self.out = out
        self._left = n_items
        self._bundle_id = bundle_id
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.cancelled = False
        if n_items == 0:
            self._done.set()

    def _finish_item(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if exc is not None:
                self._errors.append(exc)
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def cancel(self) -> None:
        """Skip the items no worker has started (their rows stay zero)."""
        self.cancelled = True

    def result(self) -> np.ndarray:
        """float32 (n_members, n, 6), once every member has run on every crop."""
        self._done.wait()
        if self._errors:
            raise NeuroRGError(f"LiteRT inference failed for model {self._bundle_id}: {self._errors[0]}")
        return self.out


def _work(jobs: queue.SimpleQueue, worker: _Worker, batch_size: int) -> None:
    """A worker thread: run (pending, crops, member, start) items until a None arrives.

    Items are taken one at a time from the queue shared by all workers, so when the plate
    reader slows one core the other worker takes more batches instead of waiting for it, and
    the next ``submit``'s items follow straight on (no core idles between calls)."""
    while True:
        item = jobs.get()
        if item is None:
            return
        pending, x, k, a = item
        if pending.cancelled:
            pending._finish_item()
            continue
        try:
            xb = x[a:a + batch_size]
            m = len(xb)
            if m < batch_size:
                xb = np.concatenate([xb, np.zeros((batch_size - m, *x.shape[1:]), np.float32)])
            it = worker.interpreters[k]
            it.set_tensor(worker.input_index[k], xb)
            it.invoke()
            pending.out[k, a:a + m] = it.get_tensor(worker.output_index[k])[:m]
        except Exception as exc:  # noqa: BLE001 - reported by Pending.result on the caller's thread;
            pending._finish_item(exc)   # a worker that died instead would leave result() waiting
        else:
            pending._finish_item()


def _stop(jobs: queue.SimpleQueue, threads: list[threading.Thread]) -> None:
    for _ in threads:
        jobs.put(None)
    for t in threads:
        if t is not threading.current_thread():
            t.join()


class Predictor:
    """Run all members of a bundle on crops.

    Parameters
    ----------
    bundle
        From ``model.load_bundle``.
    backend
        ``"auto"`` (default: Keras when the Keras backend sees a GPU, else LiteRT;
        ``devices.resolve_backend``), ``"litert"`` (the CPU fast path) or ``"keras"``
        (``predict_on_batch`` on the Keras backend's device). ``self.backend`` is what runs.
    threads
        Worker threads for LiteRT, each running single-threaded interpreters (default 2, the
        number of cores here). They start on the first ``submit`` and stop on ``close`` or
        when the predictor is garbage-collected.
    batch_size
        Crops per interpreter call (LiteRT) or per Keras batch; a short last batch is
        zero-padded, so the input shape stays fixed. Default: on an accelerator
        ``devices.accelerator_batch_size`` (sized by its memory), else
        ``default_batch_size(bundle.input_size)``: 16 up to 256 px, 1 at 1200 px.
    cache_dir
        Where members are converted and cached when the bundle does not ship a LiteRT file whose
        hash its card records; default ``conversion_cache_dir()`` (see ``member_litert``).
    precision
        ``"float32"`` or ``"bfloat16"`` (Keras only: ``kerasrun.with_precision``).
    accelerators
        The device query ``auto`` and the batch size use (tests inject one).

    Several threads may call ``submit`` / ``predict`` at once: their items share the workers,
    and each worker owns its own interpreters.
    """

    def __init__(self, bundle: Bundle, *, backend: Backend = "auto", threads: int = 2,
                 batch_size: int | None = None, cache_dir: str | Path | None = None,
                 precision: Precision = "float32", accelerators: AcceleratorQuery = visible_accelerators):
        engine = resolve_backend(backend, precision, accelerators=accelerators)
        if batch_size is None:
            found = accelerators() if engine == "keras" else ()
            batch_size = (accelerator_batch_size(bundle.input_size, found[0]) if found
                          else default_batch_size(bundle.input_size))
        if threads < 1 or batch_size < 1:
            raise NeuroRGError(f"threads {threads} and batch size {batch_size} must be >= 1")
        self.bundle = bundle
        self.backend = engine
        self.precision = precision
        self.threads = int(threads)
        self.batch_size = int(batch_size)
        self.input_size = bundle.input_size
        self._lock = threading.Lock()   # starting / stopping workers; Keras predict calls
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        if engine == "keras":
            from neurorg_core.kerasrun import KerasRunner

            self._keras = KerasRunner([load_member_model(m) for m in bundle.members], self.batch_size, precision)
            self._workers: list[_Worker] = []
            self.litert_files: list[Path] = []
            self.nbytes = self._keras.nbytes
        else:
            models = [member_litert(m, bundle, cache_dir) for m in bundle.members]
            self.litert_files = [path for path, _ in models]
            self._workers = [self._make_worker(models) for _ in range(self.threads)]
            self.nbytes = self.threads * sum(len(blob) for _, blob in models)
        """Bytes of the loaded models (LiteRT: each worker holds its own copy); what a
        ``PredictorCache`` counts."""
        # stops the workers when the predictor goes away (the finalizer holds no reference to it)
        self._finalizer = weakref.finalize(self, _stop, self._jobs, self._threads)

    def _make_worker(self, models: list[tuple[Path, bytes]]) -> _Worker:
        from ai_edge_litert.interpreter import Interpreter

        interpreters = []
        for path, blob in models:
            try:   # from the bytes that were checked, not the file (which could change meanwhile)
                it = Interpreter(model_content=blob, num_threads=1)
                detail = it.get_input_details()[0]
                it.resize_tensor_input(detail["index"], [self.batch_size, self.input_size,
                                                         self.input_size, 3])
                it.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise NeuroRGError(f"LiteRT cannot load the converted model ({exc}); delete it to "
                                   "convert again", path=path) from exc
            interpreters.append(it)
        return _Worker(interpreters, [it.get_input_details()[0]["index"] for it in interpreters],
                       [it.get_output_details()[0]["index"] for it in interpreters])

    @property
    def n_members(self) -> int:
        return len(self.bundle.members)

    def _check(self, crops: np.ndarray) -> np.ndarray:
        x = np.asarray(crops)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise NeuroRGError(f"crops have shape {x.shape}; expected (n, {s}, {s}, 3) for model "
                               f"{self.bundle.id}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def submit(self, crops: np.ndarray) -> Pending:
        """Queue every member's run on ``crops`` and return at once (LiteRT; Keras runs here).

        Parameters and result as ``predict``; ``Pending.result()`` gives the probabilities.
        """
        x = self._check(crops)
        n = len(x)
        out = np.zeros((self.n_members, n, N_CLASSES), np.float32)
        if n == 0:
            return Pending(out, 0, self.bundle.id)
        if self.backend == "keras":
            with self._lock:
                out[:] = self._keras.predict(x)
            return Pending(out, 0, self.bundle.id)
        bs = self.batch_size
        items = [(k, a) for k in range(self.n_members) for a in range(0, n, bs)]
        pending = Pending(out, len(items), self.bundle.id)
        with self._lock:   # items go in after any earlier close()'s stop signals, never among them
            if not self._threads:
                self._threads.extend(
                    threading.Thread(target=_work, args=(self._jobs, w, bs), daemon=True,
                                     name=f"neurorg-litert-{i}")
                    for i, w in enumerate(self._workers))
                for t in self._threads:
                    t.start()
            for k, a in items:
                self._jobs.put((pending, x, k, a))
        return pending

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities of every member.

        Parameters
        ----------
        crops
            float32 (n, s, s, 3) in [0, 1], ``schema.CHANNELS`` order, s = the bundle's input size.

        Returns
        -------
        numpy.ndarray
            float32 (n_members, n, 6); each row sums to 1.
        """
        return self.submit(crops).result()

    def close(self) -> None:
        """Stop the worker threads once the queued work is done (a later ``submit`` restarts them)."""
        with self._lock:
            _stop(self._jobs, self._threads)
            self._threads.clear()


DEFAULT_PREDICTOR_CACHE_BYTES = 512 * 2**20
"""What a ``PredictorCache`` keeps unless told otherwise: 512 MiB of model weights (the demo
ensemble's predictor holds ~22 MB; a B5 ensemble ~0.5 GB)."""


class PredictorCache(BoundedCache[tuple, "Predictor"]):
    """Predictors kept between plates by whoever owns this cache (the app keeps one per server;
    a CLI run needs none), bounded by the bytes of their loaded models; the least recently used are
    closed and dropped. Keyed by backend, bundle id, member ids, input size and path: a retrained
    member (new id) gets a new predictor. Safe to share between threads."""

    def __init__(self, max_bytes: int = DEFAULT_PREDICTOR_CACHE_BYTES) -> None:
        super().__init__("predictors", max_bytes, lambda p: p.nbytes, Predictor.close)

    def predictor(self, bundle: Bundle, backend: Backend = "auto", precision: Precision = "float32", *,
                  accelerators: AcceleratorQuery = visible_accelerators) -> Predictor:
        engine = resolve_backend(backend, precision, accelerators=accelerators)
        key = (engine, precision, bundle.id, tuple(m.id for m in bundle.members), bundle.input_size,
               str(bundle.path))
        return self.get_or_make(key, lambda: Predictor(bundle, backend=engine, precision=precision,
                                                       accelerators=accelerators))


_DONE = object()


def predict_stream(batches: Iterable[tuple[Any, np.ndarray]], bundle: Bundle, *,
                   predictor: Predictor | None = None, prefetch: int = 2, ahead: int = 1,
                   ) -> Iterator[tuple[Any, np.ndarray]]:
    """Predict a stream of crop batches, reading ahead in a background thread.

    Parameters
    ----------
    batches
        Iterable of ``(key, crops)``, crops float32 (n, s, s, 3) in [0, 1]. It is consumed in a
        background thread (so reading and preprocessing overlap inference); an exception raised
        by it is re-raised here, after the results of the batches read before it.
    bundle
        The model bundle.
    predictor
        A ready ``Predictor`` for ``bundle`` (reuse one: building it loads the models).
    prefetch
        How many batches may wait, read but not yet submitted to the predictor.
    ahead
        How many further batches are submitted before a result is handed back, so the workers
        go straight on to the next batch while the caller deals with this one (storing it,
        reporting progress).

    Yields
    ------
    (key, probs)
        probs float32 (n_members, n, 6), in the input order.
    """
    pred = predictor if predictor is not None else Predictor(bundle)
    if pred.bundle.id != bundle.id:
        raise NeuroRGError(f"predictor is for model {pred.bundle.id}, not {bundle.id}")
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            q.put(exc)

    reader = threading.Thread(target=produce, name="neurorg-reader", daemon=True)
    reader.start()
    in_flight: collections.deque[tuple[Any, Pending]] = collections.deque()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                while in_flight:
                    key, pending = in_flight.popleft()
                    yield key, pending.result()
                raise item
            key, crops = item
            in_flight.append((key, pred.submit(crops)))
            if len(in_flight) > max(0, ahead):
                key, pending = in_flight.popleft()
                yield key, pending.result()
        while in_flight:
            key, pending = in_flight.popleft()
            yield key, pending.result()
    finally:
        for _, pending in in_flight:   # closed early: drop the work nobody will read
            pending.cancel()
        stop.set()
        while reader.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.1)
