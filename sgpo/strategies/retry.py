"""Retry timing for calls to rate-limited, occasionally failing teacher endpoints:
exponential backoff with jitter (so many clients hitting one server do not retry in
lockstep), and the server's ``Retry-After`` honoured in either of its two forms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # attempts after the first one
    backoff_base_s: float = 1.0  # delay before the first retry, doubled after each
    backoff_max_s: float = 60.0  # cap on the exponential delay
    retry_after_max_s: float = 300.0  # cap on a server-requested wait

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0):
        the capped exponential delay scaled by a random factor in [0.5, 1), or the server's
        ``Retry-After`` when that is longer."""
        rng = rng or random
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * (0.5 + 0.5 * rng.random())
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.retry_after_max_s))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; None if absent or
    unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
