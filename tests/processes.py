"""Find Ray worker processes by their title, to kill one in fault tests."""
from pathlib import Path


def pids_of(title_prefix: bytes) -> list[int]:
    """Process ids whose command line (Ray sets it to the task or actor name, e.g.
    b"ray::MapBatches(...)") starts with ``title_prefix``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(title_prefix):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids
