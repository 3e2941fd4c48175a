import os
import sys
from pathlib import Path

# OpenBLAS threads spin: on a shared 2-core machine they slow the least-squares algebra down by
# an order of magnitude (README, Limits). Tests run single-threaded BLAS unless told otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
