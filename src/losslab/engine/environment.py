"""Facts about the machine a cell ran on: package versions, host, threads, devices."""

from __future__ import annotations

import os
import platform
import socket
from functools import cache
from importlib.metadata import PackageNotFoundError, version

#: Packages whose versions are stored with every cell and shown in the report.
TRACKED_PACKAGES = ("losslab", "torch", "numpy", "scipy", "scikit-learn", "pandas", "dask")


@cache
def package_versions() -> dict[str, str]:
    """``{"python": ..., "losslab": ..., "torch": ..., ...}`` of this process."""
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def host_name() -> str:
    return socket.gethostname()


def machine_info() -> dict[str, object]:
    """What ``losslab info`` shows: versions, platform, CPU threads and torch devices."""
    import torch

    devices = ["cpu"] + [
        f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
    ]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return {
        **package_versions(),
        "platform": platform.platform(),
        "host": host_name(),
        "cpu_count": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "devices": devices,
    }
