"""launch/offline_bundle.py's choice of packages: the lock's dependency graph read from its `# via`
lines, the lean set as what drift and the GPU check need minus what the node has."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
bundle = load_script("launch/offline_bundle.py")

LOCK = """\
datasets==5.2.0
    # via
    #   drift (pyproject.toml)
    #   trl
dill==0.4.1
    # via
    #   datasets
    #   multiprocess
hydra-core==1.3.8
    # via drift (pyproject.toml)
multiprocess==0.70.19
    # via datasets
numpy==2.4.6
    # via
    #   datasets
    #   torch
omegaconf==2.3.1
    # via hydra-core
torch==2.13.0
    # via
    #   drift (pyproject.toml)
    #   trl
trl==1.16.0
    # via drift (pyproject.toml)
wandb==0.31.0
    # via drift (pyproject.toml)
"""


def test_lock_graph_from_via_annotations():
    pins, requires = bundle.read_lock_graph(LOCK)
    assert pins["hydra-core"] == "1.3.8" and len(pins) == 9
    assert requires["datasets"] == {"dill", "multiprocess", "numpy"}
    assert requires["trl"] == {"datasets", "torch"}
    assert requires["multiprocess"] == {"dill"}
    assert requires["drift"] == {"datasets", "hydra-core", "torch", "trl", "wandb"}


def test_lean_set_leaves_out_what_the_node_has_and_the_heavy_optionals():
    pins, requires = bundle.read_lock_graph(LOCK)
    lean = bundle.lean_set(pins, requires, node_has=["torch"])
    assert lean == {"datasets", "dill", "hydra-core", "multiprocess", "omegaconf", "trl"}
    assert "numpy" not in lean and "wandb" not in lean  # the node's torch brings numpy; wandb is left out


def test_lean_set_of_the_real_lock_is_the_pure_python_companions():
    pins, requires = bundle.read_lock_graph(bundle.GPU_LOCK.read_text())
    lean = bundle.lean_set(pins, requires, bundle.NODE_HAS)
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "trl", "liger-kernel", "datasets", "dill",
            "multiprocess"} <= lean
    assert not lean & {"torch", "triton", "transformers", "numpy", "vllm", "wandb", "gguf", "flash-attn"}
    assert bundle.full_set(pins) >= lean | {"vllm", "flash-attn", "torch"}
