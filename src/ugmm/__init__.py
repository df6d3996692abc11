"""uGMM-NN: Univariate Gaussian Mixture Model Neural Networks (arXiv 2509.07569).

Imported before torch (``import ugmm`` first in a script or notebook), the package sets
``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set, as the entry points do
(:mod:`ugmm.launch`): OpenMP threads that spin between parallel regions take the cores the working
threads need on a shared machine (docs/performance.md: the uGMM training step 72.6 ms spinning, 27.7 ms
passive, on a loaded 2-core CPU). Once torch is loaded the variable has no effect.
"""

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
