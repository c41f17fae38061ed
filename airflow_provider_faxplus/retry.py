"""Retry policy for transient failures, on tenacity (which ships with Airflow).

Exponential backoff with jitter, or the server's ``Retry-After`` when it sends one; bounded by
``max_attempts`` and by ``max_retry_seconds`` of total time (a wait that would cross that budget is
not started: the last error is raised instead).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay

from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusRequestError
from airflow_provider_faxplus.protocol import is_retryable

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
# The longest wait one answer's Retry-After can impose (the trigger never polls faster than its
# poke_interval, so there the cap is max(poke_interval, this)).
MAX_RETRY_AFTER = 300.0
# 2 ** 60 times any initial backoff is past MAX_BACKOFF; a larger exponent would overflow a float.
_MAX_EXPONENT = 60


def backoff_seconds(attempt: int, initial: float, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), for any attempt number.

    ``Retry-After`` wins when given, capped at ``MAX_RETRY_AFTER``; otherwise "equal jitter": half of
    the exponential step fixed, half random, so many clients that failed together do not retry together.
    """
    if retry_after is not None:
        if retry_after > MAX_RETRY_AFTER:
            log.warning(
                "Fax.Plus asked to wait %.0f s (Retry-After); waiting at most %g s",
                retry_after,
                MAX_RETRY_AFTER,
            )
            return MAX_RETRY_AFTER
        return max(0.0, float(retry_after))
    step = min(MAX_BACKOFF, initial * 2.0 ** min(max(attempt - 1, 0), _MAX_EXPONENT))
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not crypto


def _wait(initial: float) -> Any:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, FaxPlusRequestError) else None
        return backoff_seconds(state.attempt_number, initial, retry_after)

    return wait


def _log_before_sleep(log: logging.Logger, max_attempts: int) -> Any:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Fax.Plus request attempt %d/%d failed, retrying in %.1f s: %s",
            state.attempt_number,
            max_attempts,
            wait,
            exc,
        )

    return before_sleep


def _give_up(state: RetryCallState) -> Any:
    exc = state.outcome.exception() if state.outcome else None
    assert exc is not None
    if isinstance(exc, FaxPlusRequestError):
        exc.attempts = state.attempt_number  # type: ignore[attr-defined]
        exc.args = (
            f"{exc.args[0]} (gave up after {state.attempt_number} attempt(s) "
            f"in {state.seconds_since_start or 0.0:.1f} s)",
        )
    raise exc


def retry_kwargs(config: FaxPlusConfig, log: logging.Logger) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying``."""
    return {
        "retry": retry_if_exception(is_retryable),
        "stop": stop_after_attempt(config.max_attempts) | stop_before_delay(config.max_retry_seconds),
        "wait": _wait(config.initial_backoff),
        "before_sleep": _log_before_sleep(log, config.max_attempts),
        "retry_error_callback": _give_up,
    }
