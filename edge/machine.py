"""Describe the machine a run happened on: CPU model, cores, memory, OS, library versions, date.

Published tables are only comparable when readers know where they came from, so every result
file (benchmarks, training, export, edge run summaries) carries this one description. Lives in
edge/ because a device records it too; psutil and the standard library only (TensorFlow's
version is read from package metadata, never imported).
"""
from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import os
import platform
import sys

import psutil

# Distributions whose versions matter for latency and accuracy.
LIBRARIES = ("hemaedge", "numpy", "opencv-python-headless", "ai-edge-litert", "onnxruntime",
             "onnxruntime-gpu", "tensorrt", "tensorflow", "tensorflow-cpu", "keras", "psutil")


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux (x86 'model name', ARM 'Model'/'Hardware')."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            fields = {}
            for line in fh:
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields.setdefault(k.strip(), v.strip())
        for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
            if fields.get(key):
                return fields[key]
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_model() -> str | None:
    """Board name on a Raspberry Pi or Jetson (device tree), None elsewhere."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(path, "rb") as fh:
                return fh.read().rstrip(b"\x00").decode(errors="replace").strip() or None
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=8)
def _library_versions(names: tuple) -> tuple:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(out.items())


def library_versions(names=LIBRARIES) -> dict:
    """Installed versions of `names` (absent ones left out). Looked up once per process: the
    package metadata scan costs tens of ms, and a run rewrites its summary every few seconds."""
    return dict(_library_versions(tuple(names)))


def describe_machine(now: _dt.datetime | None = None) -> dict:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    vm = psutil.virtual_memory()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "date": now.isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "device_model": device_model(),
        "architecture": platform.machine(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": affinity,
        "memory_gb": round(vm.total / 2**30, 2),
        # other work on the machine while it ran (latency on a busy machine is slower and noisier)
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "gpu": None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
    }


def one_line(machine: dict) -> str:
    """'AMD EPYC, 2 cores, 23.4 GiB, Linux-... (2026-11-22)' for table captions."""
    dev = f"{machine['device_model']}, " if machine.get("device_model") else ""
    load = machine.get("load_average")
    return (f"{dev}{machine.get('cpu_model')} ({machine.get('architecture')}), "
            f"{machine.get('usable_cores')} usable cores, {machine.get('memory_gb')} GiB RAM, "
            f"{machine.get('os')}, {str(machine.get('date', ''))[:10]}"
            + (f", load average {load[0]:g} at start" if load else ""))
