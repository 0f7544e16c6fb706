"""Run the ``torchmaml`` command line as if no extra were installed: ``python tests/blocked_extras.py train ...``.

Setting ``sys.modules[name] = None`` makes ``import name`` raise ``ImportError``, as on an install without
``torchmaml[rl]``, ``[mujoco]``, ``[tensorboard]`` and ``[plots]``. Used by ``.ci/run`` and tests/test_imports.py.
"""

import sys

BLOCKED = ("gymnasium", "mujoco", "tensorboard", "matplotlib", "safetensors")

for name in BLOCKED:
    sys.modules[name] = None  # type: ignore[assignment]

if __name__ == "__main__":
    from torchmaml.cli import main

    sys.exit(main(sys.argv[1:]))
