"""The pass/fail gate: a run passes only inside both bounds, and says so in one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Measured:
    """What the whole run did, from Locust's aggregated statistics."""

    requests: int
    failures: int
    p99_ms: float

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    line: str
    measured: Measured
    max_p99_ms: float | None
    max_fail_ratio: float

    def to_dict(self) -> dict:
        return {**asdict(self), "fail_ratio": self.measured.fail_ratio}


def judge(measured: Measured, max_p99_ms: float | None, max_fail_ratio: float) -> Verdict:
    """PASS when some requests were made, the failure ratio is at most ``max_fail_ratio`` and
    (when bounded) the p99 latency at most ``max_p99_ms``; otherwise FAIL, naming each broken
    bound with the value measured."""
    failures = f"{measured.failures:,} of {measured.requests:,} requests failed ({measured.fail_ratio:.3%})"
    p99 = f"p99 {measured.p99_ms:,.0f} ms"
    broken = []
    if measured.requests == 0:
        broken.append("no requests were made (check --host, --tags and the shape)")
    if measured.fail_ratio > max_fail_ratio:
        broken.append(f"{failures}, over --max-fail-ratio {max_fail_ratio:g}")
    if max_p99_ms is not None and measured.requests and measured.p99_ms > max_p99_ms:
        broken.append(f"{p99}, over --max-p99-ms {max_p99_ms:g}")
    if broken:
        line = "Load test FAILED: " + "; ".join(broken)
    else:
        p99_bound = f"--max-p99-ms {max_p99_ms:g}" if max_p99_ms is not None else "no --max-p99-ms"
        line = f"Load test PASSED: {p99} ({p99_bound}), {failures} (--max-fail-ratio {max_fail_ratio:g})"
    return Verdict(not broken, line, measured, max_p99_ms, max_fail_ratio)
