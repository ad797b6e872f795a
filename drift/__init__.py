"""drift: DRIFT (Dissatisfaction-Refined Iterative preFerence Training) on a hand-written FSDP2 DPO trainer.

``drift.kernels`` lives in the repository's top-level ``kernels/`` folder, which has no
``__init__.py`` on purpose: a folder without one is at most a namespace portion, and Python prefers
any regular package of the same name, so the hub ``kernels`` distribution that transformers imports
always wins, whatever puts the repository root on ``sys.path`` (pytest's rootdir, ``python -c``, a
notebook). The package is registered here under its one name, from the source tree (editable
install, or no install at all) or from an installed wheel, where setuptools' package-dir put the
same files under ``drift/kernels/``. It loads lazily: ``import drift`` stays free of torch.
"""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _register_kernels():
    name = f"{__name__}.kernels"
    installed = _HERE / "kernels"  # a wheel: setuptools copied kernels/ here
    folder = installed if installed.is_dir() else _HERE.parent / "kernels"
    spec = importlib.util.spec_from_file_location(
        name, folder / "package.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"drift.kernels: no package.py in {folder} (a broken checkout or install)")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


# `import drift.kernels` finds the module in sys.modules and binds nothing on drift: bind it here
kernels = _register_kernels()
