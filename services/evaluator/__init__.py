"""The evaluator: scores every newest policy version alone (no bias) on held-out seeds."""
