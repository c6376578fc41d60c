"""Evaluation: benchmark kinds behind a registry, the resumable sharded runner, scoring libraries.

- `retrofit.evaluation.specs`: benchmark specs (`eval/*.yaml`).
- `retrofit.evaluation.benchmarks`: one module per benchmark kind (gsm8k, humaneval_infill,
  lengths, jsonl), each a class with load / reference_text / score / summarize.
- `retrofit.evaluation.runner`: plan -> generate and score -> merge -> summarize.
- `retrofit.evaluation.results`: per-sample files, run identity, resume; `compare`: paired tests.
- `retrofit.evaluation.generator`: a checkpoint's `generate_fn` (the inference pipeline).
- Scoring libraries: `gsm8k` (prompt, extraction), `humaneval` (data, normalisation, programs),
  `sandbox` (isolated execution of untrusted programs), `lengths` (Wasserstein-1, histograms),
  `stats` (pass@k, Wilson / bootstrap intervals, exact McNemar).

The command line (`retrofit eval`, `retrofit compare`) is `retrofit.evaluate`. Importing this
package does not import torch (the generator loads the model lazily).
"""

from retrofit.evaluation.benchmarks import EvalTask, Generation
from retrofit.evaluation.compare import compare_results
from retrofit.evaluation.generator import ModelGenerator
from retrofit.evaluation.results import load_completions, sample_stream_id
from retrofit.evaluation.runner import load_tasks, run_evaluation, summarize

__all__ = [
    "EvalTask",
    "Generation",
    "ModelGenerator",
    "compare_results",
    "load_completions",
    "load_tasks",
    "run_evaluation",
    "sample_stream_id",
    "summarize",
]
