"""Gathering calls from several threads into one batch, so a model serves concurrency in one forward pass.

A :class:`CallBatcher` holds calls that arrive while the model is busy (and, for
``window_s``, those that arrive together) and runs them as one batch. There is no
worker thread to own or stop: the first caller to find no batch running leads it,
and runs batches until its own call is answered; every other caller waits for its
own row, which the leader hands over as soon as it is done (a short answer need not
wait for the longest one in its batch). When the leader's call is answered, a
waiting caller takes over.

Example:
    >>> import threading
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> batch_sizes = []
    >>> def double(batch, deliver):
    ...     batch_sizes.append(len(batch))
    ...     for row, number in enumerate(batch):
    ...         deliver(row, 2 * number)
    >>> doubler = CallBatcher(double, lock=threading.Lock(), max_batch_size=8, window_s=0.05)
    >>> with ThreadPoolExecutor(4) as pool:
    ...     list(pool.map(doubler.submit, [1, 2, 3, 4]))
    [2, 4, 6, 8]
    >>> sum(batch_sizes), max(batch_sizes) > 1
    (4, True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

Deliver = Callable[[int, "ResultT | BaseException"], None]
"""Called by a batch function with a row's index in its batch and that row's result (or the error it ended in)."""


class _Call(Generic[RequestT, ResultT]):
    __slots__ = ("done", "outcome", "request")

    def __init__(self, request: RequestT) -> None:
        self.request = request
        self.done = False
        self.outcome: ResultT | BaseException | None = None


class CallBatcher(Generic[RequestT, ResultT]):
    """Runs concurrent :meth:`submit` calls as batches through ``run_batch``.

    Args:
        run_batch: ``run_batch(requests, deliver)`` computes every request and calls
            ``deliver(row, result)`` once for each, an exception as the result of a row
            that failed. A row it leaves undelivered gets an error; an exception it raises
            is the result of every undelivered row.
        lock: held while a batch runs; batchers that share a model share its lock.
        max_batch_size: the most calls one batch takes (1: no batching, calls run one by one).
        window_s: how long a leader waits for more calls before a batch that is not full starts.
    """

    def __init__(
        self,
        run_batch: Callable[[list[RequestT], Deliver[ResultT]], None],
        *,
        lock: threading.Lock,
        max_batch_size: int,
        window_s: float,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if window_s < 0:
            raise ValueError(f"window_s must not be negative, not {window_s}")
        self._run_batch = run_batch
        self._model_lock = lock
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self._state = threading.Condition()
        self._pending: list[_Call[RequestT, ResultT]] = []
        self._leading = False

    def submit(self, request: RequestT) -> ResultT:
        """``request``'s result, computed in a batch with whatever calls are waiting beside it."""
        call: _Call[RequestT, ResultT] = _Call(request)
        with self._state:
            self._pending.append(call)
            self._state.notify_all()  # a leader gathering a batch counts this call
            while not call.done and self._leading:
                self._state.wait()
            if not call.done:
                self._leading = True
        if not call.done:
            self._lead(call)
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        return call.outcome  # type: ignore[return-value]  # done, and not an error: the row's result

    def _lead(self, own: _Call[RequestT, ResultT]) -> None:
        try:
            while not own.done:
                with self._state:
                    if len(self._pending) < self.max_batch_size and self.window_s:
                        self._state.wait_for(lambda: len(self._pending) >= self.max_batch_size, self.window_s)
                    batch = self._pending[: self.max_batch_size]
                    del self._pending[: self.max_batch_size]
                self._run(batch)
        finally:
            with self._state:
                self._leading = False
                self._state.notify_all()  # a waiting caller leads the next batch

    def _run(self, batch: list[_Call[RequestT, ResultT]]) -> None:
        def deliver(row: int, outcome: ResultT | BaseException) -> None:
            with self._state:
                batch[row].outcome, batch[row].done = outcome, True
                self._state.notify_all()

        try:
            with self._model_lock:
                self._run_batch([call.request for call in batch], deliver)
        except BaseException as exc:
            for row, call in enumerate(batch):
                if not call.done:
                    deliver(row, exc)
            if not isinstance(exc, Exception):  # KeyboardInterrupt and the like stop the leader too
                raise
        for row, call in enumerate(batch):
            if not call.done:
                deliver(row, RuntimeError("the batch ended without answering this call"))
