"""Evaluation: what a trained model is worth on prompts it never trained on.

  heldout.py  the held-out split of the testbed: sample every checkpoint of a run (base, warm
              start, each iteration) on the held-out prompts, score with the gold reward
"""
