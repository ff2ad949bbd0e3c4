"""Keeping the device busy: a reader thread ahead of it and a writer thread behind it.

`prefetch` runs a generator (read FASTA, batch, tokenise) in a thread, `depth` items ahead.
`BackgroundWriter` takes each finished batch (still copying to the host on CUDA) and does the
waiting, window merging and writing in a thread. Both queues are bounded, so memory stays flat
whatever the speed difference; an error in either thread is raised in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a daemon thread, holding at most `depth` produced items."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(_Failed(exc))

    t = threading.Thread(target=produce, daemon=True, name="protlm-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()


class BackgroundWriter:
    """Calls `write(item)` for each `put(item)` in one thread, in order; at most `depth` waiting.

    With `many=True`, `write` takes a list instead: every item waiting when the thread comes
    back for more (at least one), so a writer that falls behind writes fewer, larger pieces
    (each written piece costs a fixed amount on top of its rows: a file, its fsyncs).

    Use as a context manager: leaving it waits for every queued write (or, after an error in
    the caller, stops after the write in progress). A write error is raised by the next put()
    or by close(). Items are written in put order, so resume bookkeeping is that of a
    synchronous loop: whatever a kill interrupts was never recorded as written.
    """

    def __init__(self, write: Callable, depth: int = 4, many: bool = False):
        self._write = write
        self._many = many
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="protlm-writer")
        self._thread.start()

    def _take(self) -> tuple[list, bool]:
        """(items to write now, whether the end was reached)."""
        item = self._q.get()
        if item is _DONE:
            return [], True
        items = [item]
        while self._many:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                return items, True
            items.append(item)
        return items, False

    def _loop(self):
        while True:
            items, done = self._take()
            if items and self._error is None and not self._abort:
                try:
                    if self._many:
                        self._write(items)
                    else:
                        self._write(items[0])
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self._error = exc
            if done:
                return

    def _check(self):
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        self._check()
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_DONE)
        self._thread.join()
        self._check()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort = True
            self._q.put(_DONE)
            self._thread.join()
            return
        self.close()
