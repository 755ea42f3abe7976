"""The numbers on-call is paged by, written once: the alert rules and the dashboard panels both read them.

The seed article's indicators (its 5.1): response latency normal < 500 ms, alert > 1 s; GPU memory
normal < 70 %, alert > 90 %; error rate normal < 0.5 %, alert > 2 %. "Normal" becomes the warning
level and "alert" the critical one. A full reasoning-model answer takes tens of seconds, so the
500 ms / 1 s latency pair applies to time to first token and to short non-streamed calls
(embeddings); non-streamed generations and Sentinel's own added latency get their own levels.
"""

from __future__ import annotations

from dataclasses import dataclass

HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class Threshold:
    """Warning and critical levels of one indicator, in its base unit (seconds or a 0..1 ratio).

    `unit` is the Grafana unit the panels showing the indicator use.
    """

    warning: float
    critical: float
    unit: str

    def __post_init__(self) -> None:
        if not self.warning < self.critical:
            raise ValueError(f"warning {self.warning} must be below critical {self.critical}")


# Latency (seconds). Histogram buckets have boundaries at these values, so quantiles are exact there.
TTFT_P95 = Threshold(0.5, 1.0, "s")
"""p95 time to first token of streamed answers, per model."""
EMBEDDINGS_P95 = Threshold(0.5, 1.0, "s")
"""p95 duration of successful embeddings calls (short, never streamed)."""
UNSTREAMED_GENERATION_P95 = Threshold(30.0, 120.0, "s")
"""p95 duration of successful non-streamed chat/completions; Dify's read timeout is 300 s."""
PROXY_OVERHEAD_P99 = Threshold(0.05, 0.25, "s")
"""p99 of the latency Sentinel itself adds (measured ~0.5 ms at concurrency 1, ~19 ms saturated)."""

# Ratios (0..1).
ERROR_RATIO = Threshold(0.005, 0.02, "percentunit")
"""Failed requests over all requests except client cancellations; caller errors (4xx) excluded."""
GPU_MEMORY = Threshold(0.70, 0.90, "percentunit")
"""GPU memory used over total, per GPU (not for vLLM/SGLang, which preallocate ~90 %)."""
KV_CACHE = Threshold(0.85, 0.95, "percentunit")
"""Share of the model server's KV cache in use; near 1 vLLM/SGLang queue and preempt requests."""

# Audit trail and disaster recovery (seconds).
AUDIT_SHIPPING_LAG = Threshold(5 * 60.0, 30 * 60.0, "s")
"""Age of the oldest audit record not yet shipped to Elasticsearch."""
BACKUP_AGE = Threshold(26 * HOUR, 50 * HOUR, "s")
"""Time since the last successful backup: daily backups, one missed run warns, two are critical."""
DRILL_AGE = Threshold(35 * DAY, 95 * DAY, "s")
"""Time since the last passed restore drill: monthly drills, a missed quarter is critical."""
AUDIT_VERIFY_STALE = 2.0
"""Time since the last completed audit verification check, in its schedule's longest interval: one
missed run is tolerated, a second warns."""
