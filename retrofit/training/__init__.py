"""The components of the training recipe (``retrofit/train.py`` is the recipe that uses them).

=====================  ===========================================================================
module                 what it owns
=====================  ===========================================================================
checkpoint_names       the file and directory names of a run (``checkpoint-<step>``, ``COMPLETE``,
                       ``trainer_state.json``, ``metrics.jsonl``, ...), defined once
accelerator            the Accelerator (single process / DDP / DeepSpeed ZeRO) and the DeepSpeed
                       values the recipe owns
model                  the tokenizer and the retrofitted model (trainable weights in fp32)
batches                the global micro-batch stream, identical on every rank
objectives             one class per training objective (flexmdm, mdm): noise -> shard -> loss
optim                  AdamW over the adapter's parameter groups, warmup + half-cosine lr
checkpointing          atomic checkpoints, keep-last-K, resume, the model export
metrics                metrics.jsonl and the tensorboard / wandb trackers
hub_push               the push_to_hub preflight, background checkpoint uploads, the final push
=====================  ===========================================================================

This package imports nothing at import time, so ``retrofit.training.checkpoint_names`` is cheap to
import from anywhere (``retrofit.hub`` reads a run's files by these names).
"""
