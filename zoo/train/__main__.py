"""`python -m zoo.train ...` (and `torchrun --nproc-per-node N -m zoo.train ...`): same options as `zoo train`."""

import sys

from zoo.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
