"""Sampling replies from a saved policy, always in a process of its own.

  client.py   ``sample(SamplingJob(...))``: the one way every caller starts the sampler, with one
              reuse rule (same weights fingerprint, prompts and settings -> the finished samples)
  process.py  what launch/sample.py runs: requests, per-draw seeds, retries, the hf and vllm backends
  engine.py   the hf backend's engine: continuous batching over a static KV cache, packed GEMMs,
              top-p without a full sort
"""
