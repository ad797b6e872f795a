"""Evaluation: what a trained model is worth on prompts it never trained on, and how it is scored.

  gold.py        the testbed's gold reward: each conversation's preference spec and its rules
  heldout.py     sample every checkpoint of a run (base, warm start, each iteration) on the
                 held-out split and score it with the gold reward
  testbed.py     the `testbed` command: a run's samples and pairs scored by gold, per iteration
  benchmarks.py  the benchmark harnesses' file formats (AlpacaEval, Arena-Hard, MT-Bench)
  export.py      the `export` command: sample a checkpoint on a benchmark's prompts, write its file
"""
