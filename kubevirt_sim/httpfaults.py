"""Faults injected into the responses to API clients: error codes, and requests held until the client times out.

Controllers write through the store directly, so these faults never reach them.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)


@dataclass
class HttpFault:
    """One rule. A request matches when every given filter matches; `count` None means unlimited.

    `after_commit` applies the write first and then responds with the fault, which is how a client
    sees a write that succeeded behind a 500 or a timeout.
    """

    id: str
    code: int | None
    timeout: bool
    share: float
    method: str | None
    plural: str | None
    name: str | None
    subresource: str | None
    count: int | None
    hold_seconds: float
    after_commit: bool
    fired: int = 0

    def matches(self, method: str, plural: str | None, name: str | None, subresource: str | None) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.plural is not None and self.plural != plural:
            return False
        if self.name is not None and self.name != name:
            return False
        if self.subresource is not None and self.subresource != subresource:
            return False
        return self.count is None or self.fired < self.count


class HttpFaults:
    """The rules in force, checked in the order they were added; the first that fires wins.

    Whether a rule with share < 1 fires is drawn from a `random.Random(seed)`, so the same
    sequence of requests meets the same faults in every run.
    """

    def __init__(self, seed: int = 0):
        self._rules: list[HttpFault] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self.released = threading.Event()

    def add(
        self,
        code: int | None = None,
        timeout: bool = False,
        share: float = 1.0,
        method: str | None = None,
        plural: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        count: int | None = None,
        hold_seconds: float = 30.0,
        after_commit: bool = False,
    ) -> str:
        """Add a rule and return its id.

        Either `code` (an HTTP status returned with a matching Status body, and 429 carries
        `Retry-After: 1`) or `timeout` (the request is held `hold_seconds` real seconds, then the
        connection closes without a response). `share` is the probability that a matching request
        is hit; `count` caps how many requests the rule hits.
        """
        if code is None and not timeout:
            raise ValueError("an HTTP fault needs a code or timeout=True")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, got {share}")
        with self._lock:
            rule = HttpFault(
                id=f"http-{next(self._ids)}",
                code=code,
                timeout=timeout,
                share=share,
                method=method,
                plural=plural,
                name=name,
                subresource=subresource,
                count=count,
                hold_seconds=hold_seconds,
                after_commit=after_commit,
            )
            self._rules.append(rule)
        logger.info("HTTP fault %s added: %s", rule.id, asdict(rule))
        return rule.id

    def remove(self, fault_id: str) -> bool:
        """Remove one rule; False when no rule has that id."""
        with self._lock:
            before = len(self._rules)
            self._rules = [rule for rule in self._rules if rule.id != fault_id]
            return len(self._rules) != before

    def clear(self) -> None:
        """Remove every rule and release the requests being held."""
        with self._lock:
            self._rules.clear()
        self.released.set()
        self.released = threading.Event()

    def list(self) -> list[dict]:
        with self._lock:
            return [asdict(rule) for rule in self._rules]

    def pick(self, method: str, plural: str | None, name: str | None, subresource: str | None) -> HttpFault | None:
        """Return the rule that hits this request, counting the hit, or None."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, plural, name, subresource):
                    continue
                if rule.share < 1.0 and self._random.random() >= rule.share:
                    continue
                rule.fired += 1
                logger.info("HTTP fault %s hits %s %s/%s/%s", rule.id, method, plural, name, subresource or "")
                return rule
        return None
