"""Benchmarks: GSM8K scoring, HumanEval infilling in a sandbox, length statistics, statistics.

Submodules (import what you need; none imports torch):

- `retrofit.evaluation.gsm8k`: the zero-shot prompt shared with training data, answer extraction
  and strict/flexible scoring.
- `retrofit.evaluation.humaneval`: HumanEval infilling data, completion normalisation, scoring.
- `retrofit.evaluation.sandbox`: isolated, resource-limited execution of untrusted programs.
- `retrofit.evaluation.lengths`: Wasserstein-1 between length distributions, histogram PNG.
- `retrofit.evaluation.stats`: pass@k, Wilson / bootstrap intervals, exact McNemar.
- `retrofit.evaluation.specs`: benchmark specs (`eval/*.yaml`).

The runner (`retrofit eval`, `retrofit compare`) is `retrofit.evaluate`.
"""
