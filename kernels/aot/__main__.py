"""``python -m kernels.aot``: compile, report and gate (see :mod:`kernels.aot`)."""
import sys

from kernels.aot.gate import main

sys.exit(main())
