"""Small helpers of the bench harness: logging, LSNs, /proc readings, processes."""

from __future__ import annotations

import gc
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
CLK_TCK = os.sysconf("SC_CLK_TCK")

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lsn_int(text: str | None) -> int | None:
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_str(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_mem_mb(pid: int) -> dict | None:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        return None
    return out or None


def proc_threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            continue
        # Normalise numbered thread names (rdk:broker1, pool-3-thread-7, ...).
        key = re.sub(r"\d+", "#", name)
        out[key] = out.get(key, 0.0) + cpu
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def box_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


class CpuWindow:
    """Machine-wide CPU use and the broker's CPU seconds over a measured window."""

    def __init__(self, kafka_pid: int | None):
        self.kafka_pid = kafka_pid
        self.box0 = box_cpu()
        self.kafka0 = proc_cpu_s(kafka_pid) if kafka_pid else None

    def result(self) -> dict:
        busy1, total1 = box_cpu()
        busy = busy1 - self.box0[0]
        total = total1 - self.box0[1]
        out = {"box_cpu_util": round(busy / total, 3) if total else None,
               "box_cpu_busy_s": round(busy / CLK_TCK, 2)}
        if self.kafka_pid:
            k1 = proc_cpu_s(self.kafka_pid)
            if k1 is not None and self.kafka0 is not None:
                out["broker_cpu_s"] = round(k1 - self.kafka0, 2)
        return out


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"command failed: {' '.join(map(str, cmd))}\n{e.stdout}\n{e.stderr}\n")
        raise


def stop_process(p: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, SIGKILL as a last resort. Only processes we started."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {p.pid} ignored SIGTERM for {timeout:.0f} s; SIGKILL")
        p.kill()
        return p.wait()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]



def free_port() -> int:
    """A TCP port nobody listens on right now (for a relay's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def between_measurements() -> None:
    """The cyclic garbage collector runs only here (bench.py disables it), outside
    any measured window."""
    gc.collect()
