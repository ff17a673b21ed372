"""The `llava-jax demo` stages, as a file to edit: `llava-jax demo --config configs/demo.py`.

The demo reads its own copy inside the package (`llava_jax/demo/config.py`, so
an installed `llava-jax demo` needs no source tree); this file re-exports it.
To change a stage, replace `get_config` here with your own (start from the
package's, e.g. `c = get_config(arg); c.num_steps = 3000; return c`).
"""

from llava_jax.demo.config import DATA, QUICK_DATA, STAGE_DATA, STAGES, get_config  # noqa: F401
