"""Run every benchmark in bench/ (``make bench``): each starts moonflask and the
reference Moonraker against the same simulated printer and prints its figures
with the moonflask/Moonraker ratio.  ``python bench/run.py [NAME ...]`` runs a
subset (``core``, ``files``, ``database``, ``idle_cpu``,
``update_manager``, ...)."""
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    wanted = sys.argv[1:]
    status = 0
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(path)[6:-3]
        if wanted and name not in wanted:
            continue
        print(f"== {name}", flush=True)
        status |= subprocess.call([sys.executable, path], cwd=HERE)
    return status


if __name__ == "__main__":
    sys.exit(main())
