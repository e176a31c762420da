"""Serving metrics from per-request timings: the formulas, published with every result.

Tools disagree on what TPOT and ITL mean (vLLM, genai-perf and guidellm each differ), so the
definitions are printed in results.json ("formulas") and results.md. Keys follow vLLM's
`bench serve` (mean_ttft_ms, median_ttft_ms, p99_ttft_ms, ..., request_throughput,
output_throughput, total_token_throughput, request_goodput, completed, failed) so existing
dashboards read them. numpy's default (linear) percentile, as vLLM uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

FORMULAS = {
    "ttft": "TTFT = time from sending the request to receiving the first streamed token",
    "tpot": "TPOT = (E2E - TTFT) / (output tokens - 1), per request with > 1 output token",
    "itl": "ITL = gaps between consecutive streamed chunks, pooled over all requests",
    "e2el": "E2E = time from sending the request to receiving its last byte",
    "duration": "duration = first measured send -> last measured completion (warm-up excluded)",
    "request_throughput": "completed requests / duration",
    "output_throughput": "output tokens of completed requests (server `usage`) / duration",
    "total_token_throughput": "(prompt + output tokens of completed requests) / duration",
    "request_goodput": "completed requests meeting every SLO / duration (itl SLO: the request's longest chunk gap)",
    "send_lag": "actual send time - scheduled send time (client saturation when large)",
    "percentiles": "numpy linear interpolation (as vLLM); mean, median, p90, p99, std",
}
LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p90", "p99")


@dataclass
class RequestResult:
    """One request as the client saw it. Times in seconds, relative to the run's start."""

    index: int
    scheduled_s: float = 0.0  # when the load generator meant to send it
    sent_s: float = 0.0  # when it was actually sent
    ok: bool = False
    status: int | None = None  # HTTP status (None: no response, e.g. connection error)
    error: str | None = None
    prompt_tokens: int = 0  # from the server's `usage`
    output_tokens: int = 0  # from the server's `usage`
    ttft_s: float | None = None
    e2el_s: float | None = None
    itl_s: list[float] = field(default_factory=list)  # gaps between streamed chunks
    finish_reason: str | None = None
    usage_reported: bool = False  # False: the server sent no `usage`; counts are estimates

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or self.ttft_s is None or self.e2el_s is None:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def done_s(self) -> float:
        return self.sent_s + (self.e2el_s or 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tpot_s"] = self.tpot_s
        return d


def stats_ms(values_s: list[float], name: str) -> dict[str, float]:
    """mean/median/std/p90/p99 of a list of seconds, in ms, under vLLM's key names."""
    if not values_s:
        return {f"{s}_{name}_ms": float("nan") for s in STATS}
    a = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {
        f"mean_{name}_ms": float(a.mean()),
        f"median_{name}_ms": float(np.median(a)),
        f"std_{name}_ms": float(a.std()),
        f"p90_{name}_ms": float(np.percentile(a, 90)),
        f"p99_{name}_ms": float(np.percentile(a, 99)),
    }


def meets_slo(r: RequestResult, slo: dict[str, float]) -> bool:
    """True if a completed request meets every SLO (ms): ttft, tpot, e2el, itl (its longest gap)."""
    if not r.ok:
        return False
    values = {"ttft": r.ttft_s, "tpot": r.tpot_s, "e2el": r.e2el_s, "itl": max(r.itl_s, default=0.0)}
    for key, limit_ms in slo.items():
        v = values[key]
        if v is not None and v * 1000.0 > limit_ms:
            return False
    return True


def duration_s(results: list[RequestResult]) -> float:
    """First send -> last completion over the measured requests."""
    if not results:
        return 0.0
    start = min(r.sent_s for r in results)
    end = max(r.done_s for r in results)
    return max(end - start, 1e-9)


def summarize(
    results: list[RequestResult], slo: dict[str, float] | None = None, duration: float | None = None
) -> dict[str, float]:
    """The whole summary of one load level (flat dict of numbers)."""
    ok = [r for r in results if r.ok]
    dur = duration if duration is not None else duration_s(results)
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.prompt_tokens for r in ok)
    good = sum(meets_slo(r, slo) for r in ok) if slo else len(ok)
    lags = [max(r.sent_s - r.scheduled_s, 0.0) for r in results]
    summary: dict[str, float] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "rate_limited": sum(r.status == 429 for r in results),
        "duration": dur,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "request_throughput": len(ok) / dur if dur else 0.0,
        "output_throughput": out_tok / dur if dur else 0.0,
        "total_token_throughput": (in_tok + out_tok) / dur if dur else 0.0,
        "request_goodput": good / dur if dur else 0.0,
        "mean_send_lag_ms": float(np.mean(lags) * 1000.0) if lags else 0.0,
        "max_send_lag_ms": float(np.max(lags) * 1000.0) if lags else 0.0,
        "usage_missing": sum(not r.usage_reported for r in ok),
    }
    summary.update(stats_ms([r.ttft_s for r in ok if r.ttft_s is not None], "ttft"))
    summary.update(stats_ms([t for r in ok if (t := r.tpot_s) is not None], "tpot"))
    summary.update(stats_ms([g for r in ok for g in r.itl_s], "itl"))
    summary.update(stats_ms([r.e2el_s for r in ok if r.e2el_s is not None], "e2el"))
    return summary


def saturation_warning(summary: dict[str, float], open_loop: bool) -> str | None:
    """A message when the client itself could not keep the schedule (its figures then
    understate the offered load). Closed loop: sends should follow completions at once."""
    limit_ms = 10.0 if open_loop else 50.0
    if summary.get("mean_send_lag_ms", 0.0) > limit_ms:
        return (
            f"client saturated: requests left on average {summary['mean_send_lag_ms']:.1f} ms "
            f"after their scheduled time (max {summary['max_send_lag_ms']:.1f} ms); the load "
            "generator, not the server, may be limiting these figures"
        )
    return None
