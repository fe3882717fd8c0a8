"""Device presets: which back ends, thread counts and baselines a device's table holds.

The same `hemaedge bench run --preset pi|jetson|desktop` then works everywhere; rows whose
runtime is not installed on the device are reported as `skipped` with the reason.
"""
from __future__ import annotations

import importlib.util
import os

from hemaedge.edge.backends import REGISTRY

# back end / baseline -> Python modules it needs (any one of each tuple): the device back ends
# come from the one registry in edge/backends.py, plus the Keras baseline of the desktop
TOOLS = {name: info.modules for name, info in REGISTRY.items()}
TOOLS["keras"] = (("tensorflow",), ("keras",))

INSTALL_HINT = {name: info.install_hint for name, info in REGISTRY.items()}
INSTALL_HINT["keras"] = "the Keras fp32 baseline needs TensorFlow: pip install 'hemaedge[train]'"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


PRESETS = {
    # A workstation or laptop CPU: every format, 1 thread and all cores up to 4.
    "desktop": {"backends": ("tflite", "onnx", "tensorrt"), "threads": None, "baseline": True,
                "help": "every back end; threads 1 and min(4, cores)"},
    # Raspberry Pi 4/5: 4 Cortex-A cores, LiteRT (XNNPACK) and ONNX Runtime; no GPU runtime.
    "pi": {"backends": ("tflite", "onnx"), "threads": (1, 4), "baseline": True,
           "help": "LiteRT and ONNX Runtime, threads 1 and 4"},
    # Jetson: TensorRT engines on the GPU first, CPU runtimes for comparison.
    "jetson": {"backends": ("tensorrt", "onnx", "tflite"), "threads": (1, 4), "baseline": True,
               "help": "TensorRT, ONNX Runtime and LiteRT, threads 1 and 4"},
}


def preset_threads(name: str) -> tuple[int, ...]:
    t = PRESETS[name]["threads"]
    if t is None:
        t = tuple(sorted({1, max(1, min(4, _usable_cores()))}))
    return tuple(t)


def installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it (TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked via sys.modules[name] = None
        return False


def missing_tool(tool: str) -> str | None:
    """Why `tool` cannot run here (None when it can): names the missing module and how to get it."""
    for alternatives in TOOLS.get(tool, ()):
        if not any(installed(m) for m in alternatives):
            return f"{' or '.join(alternatives)} not installed; {INSTALL_HINT[tool]}"
    return None
