"""What else the machine was doing during a trial: the noise a benchmark number carries.

Captured at the start and end of every trial: load average, CPU frequency and governor (/sys, /proc),
the CPU other processes used over the trial (psutil when installed, else /proc/<pid>/stat), and on a
GPU its clocks, temperature, power and throttle reasons (nvidia-ml-py, imported lazily). Anything
unreadable is recorded as None, never an error: a benchmark must not fail for want of /sys.

The machine is called busy when other processes used at least BUSY_OTHER_CORES cores on average over
the trial, or the 1-minute load average exceeded the core count: the benchmark then shared the CPU.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

BUSY_OTHER_CORES = 0.5  # half a core of others' work: on a CPU engine that is a visible slowdown
TOP_PROCESSES = 5


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_frequency() -> dict:
    """Current/min/max MHz (mean over CPUs) and governors, from /sys; /proc/cpuinfo MHz as a fallback."""
    out = {"mhz": None, "min_mhz": None, "max_mhz": None, "governor": None}
    cur = [_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")]
    cur = [int(c) / 1000 for c in cur if c and c.isdigit()]
    if cur:
        out["mhz"] = round(sum(cur) / len(cur), 1)
        for key, name in (("min_mhz", "cpuinfo_min_freq"), ("max_mhz", "cpuinfo_max_freq")):
            value = _read(f"/sys/devices/system/cpu/cpu0/cpufreq/{name}")
            out[key] = int(value) / 1000 if value and value.isdigit() else None
    else:
        info = _read("/proc/cpuinfo") or ""
        mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        out["mhz"] = round(sum(mhz) / len(mhz), 1) if mhz else None
    governors = {_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")}
    governors.discard(None)
    out["governor"] = ",".join(sorted(governors)) or None
    return out


def process_cpu_times() -> dict[int, tuple[str, float]]:
    """pid -> (name, user+system CPU seconds) for every process readable."""
    try:
        import psutil
    except ImportError:
        psutil = None
    out = {}
    if psutil is not None:
        for p in psutil.process_iter(["name", "cpu_times"]):
            times = p.info.get("cpu_times")
            if times is not None:
                out[p.pid] = (p.info.get("name") or "?", times.user + times.system)
        return out
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in glob.glob("/proc/[0-9]*/stat"):
        text = _read(stat)
        if not text or ")" not in text:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(stat.split("/")[2])] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime, stime
    return out


def gpu_state() -> list[dict] | None:
    """Per GPU: SM/memory clocks (MHz), temperature (C), power (W), utilization and throttle reasons;
    None without nvidia-ml-py or a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    gpus = []
    # renamed "ClocksEventReasons" in NVML 12.x; the old name remains an alias in nvidia-ml-py 13
    throttle = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))  # None: recorded as None
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu = {"index": i}
            probes = {
                "name": lambda: pynvml.nvmlDeviceGetName(h),
                "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000,
                "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
                "utilization_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                "throttle_reasons": lambda: int(throttle(h)),  # bit mask: power cap, thermal, ...
            }
            for key, probe in probes.items():
                try:
                    value = probe()
                    gpu[key] = value.decode() if isinstance(value, bytes) else value
                except Exception:  # a field this GPU or driver does not expose
                    gpu[key] = None
            gpus.append(gpu)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def snapshot() -> dict:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"time": time.time(), "loadavg": load, "cpu": cpu_frequency(), "gpu": gpu_state()}


class EnvironmentMonitor:
    """with EnvironmentMonitor() as env: ...run a trial...; env.result -> dict (see summarize_environment).
    own_pids: the benchmark's other processes (client workers), not counted as others' load."""

    def __init__(self, own_pids=()):
        self.own_pids = set(own_pids)

    def __enter__(self):
        self.start, self._procs, self._wall = snapshot(), process_cpu_times(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.result = summarize_environment(self.start, snapshot(), self._procs, process_cpu_times(),
                                            time.perf_counter() - self._wall, exclude=self.own_pids)
        return False


def summarize_environment(start: dict, end: dict, procs_start: dict, procs_end: dict, wall_s: float,
                          own_pid: int | None = None, exclude=()) -> dict:
    """Others' CPU over the interval (cores, averaged), the busiest other processes, and the busy verdict."""
    own_pid = os.getpid() if own_pid is None else own_pid
    others = []
    for pid, (name, cpu_end) in procs_end.items():
        if pid == own_pid or pid in exclude or pid not in procs_start:
            continue
        used = cpu_end - procs_start[pid][1]
        if used > 0 and wall_s > 0:
            others.append((used / wall_s, pid, name))
    others.sort(reverse=True)
    other_cores = sum(c for c, _, _ in others)
    cores = os.cpu_count() or 1
    load1 = (start.get("loadavg") or [None])[0]
    reasons = []
    if other_cores >= BUSY_OTHER_CORES:
        reasons.append(f"other processes used {other_cores:.2f} of {cores} cores")
    if load1 is not None and load1 > cores:
        reasons.append(f"load average {load1:.2f} > {cores} cores at the start")
    return {"start": start, "end": end, "wall_s": wall_s, "cpu_count": cores, "other_cpu_cores": round(other_cores, 3),
            "top_processes": [{"pid": pid, "name": name, "cores": round(c, 3)} for c, pid, name in
                              others[:TOP_PROCESSES] if c >= 0.01],
            "busy": bool(reasons), "busy_reasons": reasons}


def one_line(env: dict | None) -> str:
    """'load 2.1/1.8, 2445 MHz (governor n/a), others 1.3 cores (python 0.9), BUSY' for tables."""
    if not env:
        return "not recorded"
    start, end = env.get("start") or {}, env.get("end") or {}
    bits = []
    if start.get("loadavg") and end.get("loadavg"):
        bits.append(f"load {start['loadavg'][0]:.2f}->{end['loadavg'][0]:.2f}")
    cpu = start.get("cpu") or {}
    if cpu.get("mhz"):
        bits.append(f"{cpu['mhz']:.0f} MHz ({cpu.get('governor') or 'governor n/a'})")
    top = env.get("top_processes") or []
    bits.append(f"others {env.get('other_cpu_cores', 0):.2f} cores" +
                (f" ({', '.join(p['name'] + ' ' + format(p['cores'], '.2f') for p in top[:2])})" if top else ""))
    for g in (end.get("gpu") or []):
        bits.append(f"GPU{g['index']} {g.get('sm_clock_mhz')} MHz {g.get('temperature_c')} C {g.get('power_w')} W")
    if env.get("busy"):
        bits.append("BUSY")
    return ", ".join(bits)
