"""Writes every wheel a GPU node without network needs, at locks/gpu.txt's versions, for a named Python
version and platform; `bash launch/setup_env.sh --offline OUT` installs it there with no index.

  python launch/offline_bundle.py OUT --python-version 3.12                 # lean: the node has CUDA torch
  python launch/offline_bundle.py OUT --python-version 3.12 --full          # everything in the GPU lock
  python launch/offline_bundle.py OUT --python-version 3.12 --node-has torch,triton,transformers

Lean (the default) is for a node that already has a CUDA torch, triton and transformers with their
companions (--node-has, default NODE_HAS below): it carries what drift, its config system and the
peers of the GPU check need beyond those, and nothing the node has. wandb (a 20 MB binary, imported
only when logging.wandb_mode is not `disabled`) and gguf (only for the embedded GGUF model, which
cannot travel) stay out of it. Which packages that is follows from the lock: the dependency graph is
read from its `# via` annotations, so the bundle changes when the lock does.

The bundle also carries a SmolLM2-135M-shaped model folder (config and tokenizer, no weights; the GPU
check builds it with seeded random weights) under models/, and a manifest.json saying what it holds.
A package that PyPI ships only as source is built here into a wheel when that wheel is pure Python
(antlr4-python3-runtime); otherwise its source archive travels and builds on the node (flash-attn,
--full only). The folder is written beside OUT and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_LOCK = REPO / "locks" / "gpu.txt"
# what a stock CUDA PyTorch node has (the issue that asked for this: Python 3.12, torch+cu130,
# triton, transformers, accelerate, safetensors, numpy, pyarrow), with their own dependencies
NODE_HAS = ("torch", "triton", "transformers", "accelerate", "safetensors", "numpy", "pyarrow")
# what the node runs: drift (pyproject's dependencies) and the GPU check's peers
LEAN_ROOTS = ("hydra-core", "tqdm", "peft", "datasets", "trl", "liger-kernel")
LEAN_LEAVES_OUT = ("wandb", "gguf")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
VIA = re.compile(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\s|$)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock_graph(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(name -> version, name -> the names it requires) from a `uv pip compile` file's pins and `# via` lines."""
    pins: dict[str, str] = {}
    requires: dict[str, set[str]] = defaultdict(set)
    current = None
    for line in text.splitlines():
        pinned = PIN.match(line)
        if pinned:
            current = canonical(pinned.group(1))
            pins[current] = pinned.group(2)
            continue
        via = VIA.match(line)
        if via and current is not None:
            parent = canonical(via.group(1))
            if parent != "via":  # the "# via" header line of a multi-parent list
                requires[parent].add(current)
    return pins, dict(requires)


def closure(roots, requires: dict[str, set[str]], stop=frozenset()) -> set[str]:
    """roots and everything they require, not walking into `stop`"""
    seen, todo = set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        todo.extend(requires.get(name, ()))
    return seen


def lean_set(pins, requires, node_has) -> set[str]:
    have = closure(node_has, requires)
    wanted = closure(LEAN_ROOTS, requires, stop=frozenset(map(canonical, LEAN_LEAVES_OUT)))
    return {name for name in wanted - have if name in pins}


def full_set(pins) -> set[str]:
    return {name for name in pins if name != "drift"}


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
                          capture_output=True, text=True)


def download(requirement: str, wheels: Path, python_version: str, platform: str) -> str:
    """the wheel for this Python and platform, or a pure-Python wheel built here, or the source archive
    (a compiled package that must build on the node); returns which"""
    fetched = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                   "--platform", platform, "--implementation", "cp", "-d", str(wheels), requirement)
    if fetched.returncode == 0:
        return "wheel"
    with tempfile.TemporaryDirectory() as scratch:
        built = _pip("wheel", "--no-deps", "--no-binary=:all:", "-w", scratch, requirement)
        made = list(Path(scratch).glob("*.whl"))
        if built.returncode == 0 and made and made[0].name.endswith("-none-any.whl"):
            shutil.move(str(made[0]), wheels / made[0].name)
            return "built pure-Python wheel"
    source = _pip("download", "--no-deps", "--no-binary=:all:", "-d", str(wheels), requirement)
    if source.returncode == 0:
        return "source (builds on the node)"
    raise SystemExit(f"offline_bundle: no wheel or source of {requirement} for Python {python_version} on "
                     f"{platform}: {fetched.stderr.strip().splitlines()[-1:]}")


def write_smollm2_shape(models: Path) -> Path:
    """the SmolLM2-135M-shaped folder (config + tokenizer, no weights) that the GPU check builds with
    seeded random weights (`model=smollm2_shape`): the embedded model cannot travel (89 MB)"""
    from drift.model import write_model_shape

    return write_model_shape("embedded:smollm2", models / "smollm2-135m-shape")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the bundle folder to write (must not exist)")
    parser.add_argument("--python-version", required=True, help="the node's Python, e.g. 3.12")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="the node's wheel platform tag")
    parser.add_argument("--full", action="store_true", help="every package of locks/gpu.txt, not the lean set")
    parser.add_argument("--node-has", default=",".join(NODE_HAS),
                        help="comma-separated packages the node already has (lean bundles leave them and their dependencies out)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists: name a new folder")
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version!r}: give major.minor, e.g. 3.12")

    pins, requires = read_lock_graph(GPU_LOCK.read_text())
    node_has = [name for name in args.node_has.split(",") if name]
    names = sorted(full_set(pins) if args.full else lean_set(pins, requires, node_has))
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    how = {}
    for name in names:
        how[name] = download(f"{name}=={pins[name]}", wheels, args.python_version, args.platform)
        print(f"  {name}=={pins[name]}: {how[name]}")
    (staging / "requirements.txt").write_text("".join(f"{name}=={pins[name]}\n" for name in names))
    model = write_smollm2_shape(staging / "models")
    files = sorted(p.name for p in wheels.iterdir())
    megabytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) / 1e6
    manifest = dict(
        made=datetime.now(timezone.utc).isoformat(timespec="seconds"), lock="locks/gpu.txt",
        python_version=args.python_version, platform=args.platform, kind="full" if args.full else "lean",
        node_has=None if args.full else node_has, left_out=None if args.full else list(LEAN_LEAVES_OUT),
        packages={name: dict(version=pins[name], how=how[name]) for name in names}, files=files,
        model_shape=str(model.relative_to(staging)), megabytes=round(megabytes, 1),
    )
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    staging.rename(args.out)
    print(f"offline bundle: {len(names)} packages, {megabytes:.1f} MB in {args.out} "
          f"({manifest['kind']}, Python {args.python_version}, {args.platform}); on the node: "
          f"bash launch/setup_env.sh --offline {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
