"""`retrofit demo`: the paper's length claim reproduced end to end on CPU, over several seeds.

    retrofit demo                      # 3 seeds; writes demo_output/ (results.md, results.json)
    retrofit demo --seed 7 --seeds 2   # seeds 7 and 8
    retrofit demo --quick              # the same path at test size
    retrofit demo --stage eval         # re-run one stage (data | pretrain | finetune | select | eval)

For every seed, using only the toolkit's public pieces:

1. **Data** (``seed-<S>/data/``, :mod:`.task`): strings of the letters a-d in alphabetical order
   whose lengths follow ``{4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}``; fine-tuning records (whole
   strings, and 25% infilling tasks: a middle of 1-16 letters between a prefix and a suffix, its
   length not given), selection and evaluation tasks from held-out strings, and a real
   ``PreTrainedTokenizerFast``.
2. **Pretrain** (``recipes/tiny/demo-pretrain.yaml``) a tiny LLaDA-architecture MDM on EOS-padded
   canvases of whole strings, the way LLaDA is trained; cached under
   ``cache/pretrain-<hash of its settings and data>``.
3. **Fine-tune both arms for the same budget** through ``retrofit.train``: the FlexMDM retrofit
   (``demo-flexmdm.yaml``, ``adapters/demo.yaml``) and the MDM baseline (``demo-mdm.yaml``, PSM
   infilling layout, EOS-padded); an arm trained with the same settings is reused.
4. **Choose decoding settings** (:mod:`.decoding`) for each arm by one rule on the first seed's
   held-out strings; every seed is evaluated with them.
5. **Evaluate** (:mod:`.scoring`) with the eval runner through the inference pipeline: length W1
   against the exact length law, validity and infilling with 95% intervals, and the FlexMDM head
   against the Bayes-optimal count.

Then :mod:`.report` aggregates the seeds (``results.json``, ``results.md``, ``lengths.png``) and
checks the claim on every seed. What was tried and measured: docs/demo.md.
"""

from .cli import STAGES, build_parser, cli_main, run_demo
from .decoding import decoding_grid, select_setting
from .report import aggregate, check_claim
from .scoring import check_infill, check_unconditional
from .settings import ARMS, DemoPaths, DemoSettings
from .task import (
    ALPHABET,
    LENGTH_DISTRIBUTION,
    MAX_MIDDLE,
    InfillTask,
    bayes_expected_missing,
    build_tokenizer,
    infill_ok,
    is_valid,
    length_w1,
    make_infill_tasks,
    sample_strings,
)

__all__ = [
    "ALPHABET",
    "ARMS",
    "LENGTH_DISTRIBUTION",
    "MAX_MIDDLE",
    "STAGES",
    "DemoPaths",
    "DemoSettings",
    "InfillTask",
    "aggregate",
    "bayes_expected_missing",
    "build_parser",
    "build_tokenizer",
    "check_claim",
    "check_infill",
    "check_unconditional",
    "cli_main",
    "decoding_grid",
    "infill_ok",
    "is_valid",
    "length_w1",
    "make_infill_tasks",
    "run_demo",
    "sample_strings",
    "select_setting",
]
