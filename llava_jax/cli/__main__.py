"""`python -m llava_jax.cli ...`: the `llava-jax` command (how `train` and `demo` re-execute themselves)."""

import sys

from llava_jax.cli import main

sys.exit(main())
