"""Load a script of the repository (benchmarks/, launch/) as a module, once per test session."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """The module of ``REPO / relative``; registered in sys.modules before it runs, since dataclasses
    look their module up while the file executes."""
    name = "script_" + relative.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
