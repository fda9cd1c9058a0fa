"""Facts about the machine a benchmark ran on, read from the hardware and software, never typed in.

Nothing here initialises CUDA unless ``torch.cuda.is_available()`` says a GPU is present, and
torch itself is imported only when asked about the GPU, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
LIBRARIES = ("torch", "onnxruntime", "numpy")
"""Libraries whose versions ``environment()`` records, each only when importable."""

_SLUG_NOISE = re.compile(r"\((?:R|TM|C)\)|\bCPU\b|@\s*[\d.]+\s*[GM]Hz", re.IGNORECASE)


ISA_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
"""The /proc/cpuinfo flags that change which kernels ONNX Runtime and PyTorch pick (vector width,
integer dot products), so two CPUs sold under one name can be told apart in a result."""


def cpu_name() -> str:
    """The CPU's marketing name: /proc/cpuinfo's 'model name', else what ``platform`` reports."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_generation() -> dict:
    """The CPU's family and model numbers and which of ``ISA_EXTENSIONS`` it has (None and [] where
    /proc/cpuinfo does not say)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"family": info.get("cpu family"), "model": info.get("model"),
            "isa": [name for name in ISA_EXTENSIONS if name in flags]}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo, or {} where it cannot be read."""
    try:
        first_processor = CPUINFO.read_text(errors="replace").strip().split("\n\n")[0]
    except OSError:
        return {}
    fields = (line.partition(":") for line in first_processor.splitlines())
    return {key.strip(): value.strip() for key, _, value in fields if value.strip()}


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def nvidia_driver_version(index: int = 0) -> str | None:
    """The NVIDIA driver version from ``nvidia-smi``, or None when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    command = [binary, f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def gpu_info(index: int = 0) -> dict | None:
    """Name, compute capability, memory, driver, CUDA and cuDNN versions of GPU ``index``.

    None when torch sees no CUDA GPU; CUDA is then never initialised.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "name": torch.cuda.get_device_name(index),
        "compute_capability": f"{major}.{minor}",
        "total_memory_bytes": torch.cuda.get_device_properties(index).total_memory,
        "driver": nvidia_driver_version(index),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def device_slug(name: str) -> str:
    """A short, file-name-safe id for a device name.

    >>> device_slug("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
    'intel-xeon-platinum-8481c'
    """
    words = re.sub(r"[^a-z0-9]+", "-", _SLUG_NOISE.sub(" ", name).lower()).strip("-")
    return words or "unknown-device"


def library_versions() -> dict[str, str]:
    """Versions of the libraries in ``LIBRARIES`` that import here."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return versions


def environment(threads: int | None = None) -> dict:
    """Everything a reader needs to judge a measurement, JSON-ready.

    ``threads`` is the thread count the benchmark asked for (None = each library's default).
    """
    return {
        "cpu": cpu_name(),
        "cpu_generation": cpu_generation(),
        "cpu_count": cpu_count(),
        "gpu": gpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        **library_versions(),
        "threads": threads,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def device_name(device: str) -> str:
    """The name of the device a backend runs on: the CPU's model name, or the GPU's as torch reports it."""
    if device != "cuda":
        return cpu_name()
    info = gpu_info()
    return info["name"] if info else "CUDA GPU (name unknown: torch sees no GPU)"
