"""Which calls the server takes on, and how long a call may take to send its request.

Every call is admitted when its stream opens, before its request message has
arrived, and holds its place while that message arrives and, for a unary
answer, until it is answered. A connection holding no place is always
admitted, so a caller with one call at a time is never refused. A connection
that already holds places gets another only while the server holds fewer
than ``limit`` and the connection fewer than an equal share of them
(``limit`` divided by the connections holding any). So at most ``limit``
calls, plus one per other connection, are in progress; a caller that floods
the server, or opens streams and never finishes sending them, takes only its
own share; and a call past it is refused at once rather than waiting in the
server for its deadline.

A request message that has not arrived ``request_timeout`` seconds after its
call was admitted ends the call (and resets its stream), so partly-sent
streams free their place and their buffered bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

CLOCK: Final = time.monotonic


class CallAdmission:
    """Admits calls up to a fair share per connection and times their requests."""

    def __init__(
        self,
        limit: int,
        request_timeout: float,
        clock: Callable[[], float] = CLOCK,
    ) -> None:
        self.limit = limit
        self.request_timeout = request_timeout
        self._clock = clock
        self._held: dict[str, int] = {}
        self._total = 0
        self._receiving: dict[asyncio.Task[object], float] = {}
        self._timed_out: set[asyncio.Task[object]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def in_progress(self) -> int:
        """Calls holding a place now."""
        return self._total

    def admit(self, connection: str) -> bool:
        """Takes a place for a call on ``connection``; False when the
        connection already holds places and the server is full or the
        connection holds its share."""
        held = self._held.get(connection, 0)
        if held and (self._total >= self.limit or held >= max(1, self.limit // len(self._held))):
            return False
        self._held[connection] = held + 1
        self._total += 1
        return True

    def release(self, connection: str) -> None:
        """Gives back the place a call on ``connection`` held."""
        self._total -= 1
        held = self._held[connection] - 1
        if held:
            self._held[connection] = held
        else:
            del self._held[connection]

    def expect_request(self, task: asyncio.Task[object]) -> None:
        """Starts the clock on ``task``'s request message: the task is
        cancelled if the message has not arrived in time."""
        self._receiving[task] = self._clock() + self.request_timeout
        if self._sweep is None:
            self._sweep = task.get_loop().call_later(self.request_timeout, self._cancel_late)

    def request_arrived(self, task: asyncio.Task[object]) -> bool:
        """Stops the clock on ``task``; False if it had already run out."""
        self._receiving.pop(task, None)
        if task in self._timed_out:
            self._timed_out.discard(task)
            return False
        return True

    def _cancel_late(self) -> None:
        self._sweep = None
        now = self._clock()
        for task, deadline in list(self._receiving.items()):
            if deadline <= now:
                del self._receiving[task]
                self._timed_out.add(task)
                task.cancel()
        if self._receiving:
            first = min(self._receiving.values())
            loop = next(iter(self._receiving)).get_loop()
            self._sweep = loop.call_later(max(0.0, first - now), self._cancel_late)
