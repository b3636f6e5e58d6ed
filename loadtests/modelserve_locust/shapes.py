"""Load shapes: how many users run at each moment. Each is bounded in time and users.

A shape is a list of stages; a stage holds ``users`` (reached at ``spawn_rate`` users per
second) until ``until_s`` seconds into the run. After the last stage the run stops, whatever
``-u``, ``-r`` or ``-t`` say. ``--shape-users`` (the peak) and ``--shape-seconds`` (the
length) scale a shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    until_s: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class Plan:
    name: str
    stages: tuple[Stage, ...]

    @property
    def seconds(self) -> float:
        return self.stages[-1].until_s

    @property
    def peak_users(self) -> int:
        return max(stage.users for stage in self.stages)

    def at(self, run_time_s: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``run_time_s`` seconds into the run; None once it is over."""
        for stage in self.stages:
            if run_time_s < stage.until_s:
                return stage.users, stage.spawn_rate
        return None

    def describe(self) -> str:
        steps = ", ".join(f"{stage.users} users until {stage.until_s:g} s" for stage in self.stages)
        return f"--shape {self.name}: {steps}, then stop"


def step(peak: int, seconds: float) -> Plan:
    """A quarter, half, three quarters, then all of ``peak`` users, each for a quarter of the time.

    Each step is reached within about a second, so most of every step is steady load: the
    latency at each level can be read off the stats history.
    """
    quarter = seconds / 4
    users = [max(1, math.ceil(peak * k / 4)) for k in range(1, 5)]
    rate = max(1.0, peak / 4)
    return Plan("step", tuple(Stage(quarter * (k + 1), n, rate) for k, n in enumerate(users)))


def ramp(peak: int, seconds: float) -> Plan:
    """From none to ``peak`` users at an even pace over the whole time: finds the knee.

    The capacity is where requests per second stop growing with users (``capacity.py``).
    """
    return Plan("ramp", (Stage(seconds, peak, peak / seconds),))


def spike(peak: int, seconds: float) -> Plan:
    """A quarter of ``peak`` users, then all of them at once, then a quarter again.

    Each part lasts a third of the time. Shows the latency of a sudden burst and whether
    the service recovers when it ends (the last third should look like the first).
    """
    base = max(1, peak // 4)
    third = seconds / 3
    sudden = float(peak)  # users per second: the whole spike arrives within a second
    return Plan(
        "spike",
        (Stage(third, base, sudden), Stage(2 * third, peak, sudden), Stage(seconds, base, sudden)),
    )


SHAPES: dict[str, Callable[[int, float], Plan]] = {"step": step, "ramp": ramp, "spike": spike}
# Sized for the service on a 2-core machine with Locust beside it (docs/loadtesting.md): at
# 10 requests/s per user, step and spike peak near the capacity measured there, and the
# ramp goes well past it, to find it.
DEFAULT_PEAK_USERS = {"step": 20, "ramp": 100, "spike": 20}
DEFAULT_SECONDS = {"step": 80.0, "ramp": 120.0, "spike": 90.0}


def plan(name: str, peak_users: int | None, seconds: float | None) -> Plan:
    """The named shape, at the given or default scale."""
    peak = peak_users if peak_users is not None else DEFAULT_PEAK_USERS[name]
    length = seconds if seconds is not None else DEFAULT_SECONDS[name]
    if peak < 1 or length <= 0:
        raise ValueError(
            f"--shape-users must be at least 1 and --shape-seconds above 0 (got {peak}, {length})"
        )
    return SHAPES[name](peak, length)
