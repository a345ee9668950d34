"""Predictions off the event loop, with a hard bound on how many are admitted at once.

One input per model call, on a thread pool: onnxruntime releases the GIL while it runs, so while one
thread is in the model another decodes the next upload. Micro-batching concurrent requests was
measured and is not done: on the shared 2-core development machine (load average about 2), 224 px
efficientnet_lite0 INT8, one session, batch 8 gave 126 img/s in a plain loop against 105 img/s at
batch 1 (+20%), while 2 and 4 threads calling the same session at batch 1 gave 140 and 176 img/s;
batching would also make the first request of a batch wait for the others. benchmarks/bench_serve.py
prints the same comparison (plain_loop: batch8 vs batch1_2threads/batch1_4threads) for any bundle.

A request holds its slot from admission until its thread has finished, even when the client was
answered with a timeout first: memory and queued work stay bounded by workers + queue, never by the
number of impatient clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import InputError
from ..inputs import TextInput
from ..predictor import Prediction, Predictor
from ..preprocess import EncodedImage
from .metrics import ServeMetrics


class Overloaded(Exception):
    """Every slot is taken: answer 503 with Retry-After."""


@dataclass(frozen=True)
class Outcome:
    """One input's Prediction (or its error) and where its time went, in seconds."""

    prediction: Prediction
    preprocess_s: float
    inference_s: float


class Slot:
    """An admitted request. `run` hands the slot to the worker thread, which frees it when done."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool = pool
        self.handed_off = False

    async def run(self, item: EncodedImage | TextInput, top_k: int) -> Outcome:
        future = self._pool.executor.submit(self._pool.predict_one, item, top_k)
        self.handed_off = True
        future.add_done_callback(lambda _: self._pool.release())
        # a cancelled wait (the request's timeout) cancels the job if no thread has started it yet
        return await asyncio.wrap_future(future)


class InferencePool:
    def __init__(self, predictor: Predictor, *, workers: int, queue: int, metrics: ServeMetrics) -> None:
        self.predictor = predictor
        self.capacity = workers + queue
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgetl-predict")
        self._lock = threading.Lock()
        self._admitted = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[Slot]:
        """A slot for one request, or Overloaded at once; freed on exit unless handed to a thread."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Overloaded
            self._admitted += 1
        self.metrics.in_flight.inc()
        slot = Slot(self)
        try:
            yield slot
        finally:
            if not slot.handed_off:
                self.release()

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1
        self.metrics.in_flight.dec()

    def predict_one(self, item: EncodedImage | TextInput, top_k: int) -> Outcome:
        """Runs on a worker thread: decode + preprocess (or tokenize), then one model call."""
        kind, spec = self.predictor.kind, self.predictor.preprocess
        name = kind.name(item, 0)
        start = time.perf_counter()
        try:
            feed = kind.collate([kind.load(item, spec)], spec)
        except InputError as e:
            return Outcome(Prediction(name, error=str(e)), time.perf_counter() - start, 0.0)
        prepared = time.perf_counter()
        probs = self.predictor.probabilities(feed)[0]
        done = time.perf_counter()
        self.metrics.preprocess_seconds.observe(prepared - start)
        self.metrics.inference_seconds.observe(done - prepared)
        return Outcome(self.predictor.decode(name, probs, top_k), prepared - start, done - prepared)

    def close(self) -> None:
        """Let running jobs finish (graceful shutdown waits for their requests anyway)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
