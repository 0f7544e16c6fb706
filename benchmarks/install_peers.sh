#!/usr/bin/env bash
# Installs the MAML libraries that benchmarks/peers.py compares torchmaml with into the project's venv:
# higher 0.2.1, TorchOpt 0.7.3 (with optree and graphviz, which `import torchopt` needs) and learn2learn 0.2.0.
#
# Every install is --no-deps, so pip never replaces the installed torch (the script checks that torch's
# version is the same afterwards). Idempotent: what is already installed at the right version is kept.
#
# learn2learn 0.2.0 ships only an sdist whose generated C files (Cython 0.29.15) do not compile on Python 3.11;
# they are regenerated from its .pyx sources with Cython < 3 (installed into a temporary folder, not the venv)
# and the package is built without build isolation. `import learn2learn` still fails without torchvision, gym,
# scipy and requests, which are not installed: peers.py loads only learn2learn.algorithms.maml, which needs
# nothing but torch.
#
# Usage, from anywhere:   bash benchmarks/install_peers.sh        (PYTHON=/path/to/python to use another one)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, the venv's symlink kept
pip=("$python" -m pip install --no-deps --disable-pip-version-check)

torch_version() { "$python" -c "import torch; print(torch.__version__)"; }
installed() { "$python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

torch_before="$(torch_version)"

# higher and TorchOpt are wheels; optree's bound is TorchOpt's own requirement (tested with optree 0.20.0).
"${pip[@]}" higher==0.2.1 torchopt==0.7.3 "optree>=0.4.1" graphviz

if ! installed learn2learn 0.2.0; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$python" -m pip download --no-deps --no-binary :all: --disable-pip-version-check learn2learn==0.2.0 -d "$work"
    tar -xzf "$work/learn2learn-0.2.0.tar.gz" -C "$work"
    "${pip[@]}" --target "$work/cython" "cython<3"
    (
        cd "$work/learn2learn-0.2.0"
        PYTHONPATH="$work/cython" "$python" -m cython -3 -X embedsignature=True learn2learn/data/*.pyx
    )
    PYTHONPATH="$work/cython" "${pip[@]}" --no-build-isolation "$work/learn2learn-0.2.0"
fi

torch_after="$(torch_version)"
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "torch changed from $torch_before to $torch_after: reinstall torch $torch_before" >&2
    exit 1
fi
"$python" - <<'PY'
import importlib.metadata

import higher  # noqa: F401
import torch
import torchopt  # noqa: F401

versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("higher", "torchopt", "learn2learn"))
print(f"installed {versions}; torch {torch.__version__}")
PY
