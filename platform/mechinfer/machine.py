"""What ran a measurement: CPU model and count, GPU, torch version (for reports)."""

from __future__ import annotations

import os
import platform as _platform

import torch


def machine() -> dict:
    """What ran it: CPU model, threads, GPU."""
    cpu = _platform.processor() or _platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}
