"""Analyses of finished runs; each command lives in drift/analysis/<command>.py.

  python launch/analyze.py dynamics run=runs/drift_smollm2_fixture [run=runs/spin_smollm2_fixture ...]
  python launch/analyze.py <command> key=value ...
"""

import importlib
import pkgutil
import sys

import drift.analysis


def commands() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(drift.analysis.__path__) if not module.name.startswith("_"))


def main(argv: list[str]) -> int:
    available = commands()
    if not argv or argv[0] not in available:
        print(f"usage: python launch/analyze.py <command> key=value ...; commands: {', '.join(available)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"drift.analysis.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
