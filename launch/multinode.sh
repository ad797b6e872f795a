#!/usr/bin/env bash
# Launch drift on several machines with torchrun's c10d rendezvous. Run the same command on every
# node (e.g. from a Slurm/cluster script); each node runs one process per GPU.
#
#   NNODES=2 GPUS_PER_NODE=8 RDZV_HOST=node0.example RDZV_PORT=29500 RUN_ID=drift-qwen14b \
#     bash launch/multinode.sh method=drift model=qwen14b data=wildfeedback data.path=/data/sat_dsat_annotation.json
#
# Every node must see the same run folder (output_dir= on a shared filesystem): rank 0 writes
# checkpoints, the reference cache and stage markers there, and all ranks read them. Between
# iterations, global rank 0 starts the sampler process (vLLM, sampler=vllm) on its node while the
# other ranks wait; to spread sampling over every node's GPUs, set sampler.tensor_parallel_size
# and run vLLM's data parallelism across nodes as its docs describe, or shard the prompts file.
set -euo pipefail
: "${NNODES:?set NNODES}" "${RDZV_HOST:?set RDZV_HOST to the address of one node, the same on all nodes}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RDZV_PORT=${RDZV_PORT:-29500}
RUN_ID=${RUN_ID:-drift}
cd "$(dirname "$0")/.."
exec .venv/bin/torchrun \
  --nnodes "$NNODES" \
  --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" \
  --rdzv-id "$RUN_ID" \
  launch/train.py "$@"
