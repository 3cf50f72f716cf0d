"""How busy the host is, recorded next to every benchmark figure (a busy host halves CPU throughput)."""
from __future__ import annotations

import os
import time


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def host_load(seconds: float = 1.0) -> dict:
    """1-minute load average, and the steal and busy shares of CPU time over ``seconds``."""
    load1 = os.getloadavg()[0]
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
        delta = [b - a for a, b in zip(before, after)]
        total = max(1, sum(delta))
        steal = delta[7] / total if len(delta) > 7 else 0.0
        idle = (delta[3] + delta[4]) / total
    except (OSError, IndexError):
        steal, idle = 0.0, 1.0
    return {"load1": round(load1, 2), "steal_percent": round(100 * steal, 1), "busy_percent": round(100 * (1 - idle), 1),
            "cpus": os.cpu_count()}


def describe(load: dict, limit: float = 0.5) -> str:
    """One line for the benchmark's output; says 'BUSY HOST' when the figures are not to be trusted."""
    # the load average also counts what this benchmark itself just ran: judge by the sampled window
    busy = load["busy_percent"] > 100 * limit / max(1, load["cpus"]) or load["steal_percent"] > 5.0
    return (f"host: load {load['load1']} (1 min), steal {load['steal_percent']}%, busy {load['busy_percent']}% of "
            f"{load['cpus']} CPUs{'  BUSY HOST: figures below are not comparable' if busy else ''}")
