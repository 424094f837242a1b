"""Quality control and products benchmarks, in one command: bench/qc.py, then bench/products.py.

Each prints its own medians and same-run ratios against its baselines.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for script in ("qc.py", "products.py"):
        sys.argv = [str(HERE / script)]
        runpy.run_path(str(HERE / script), run_name="__main__")
