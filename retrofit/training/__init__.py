"""The components of the training recipe (``retrofit/train.py`` is the recipe that uses them).

=====================  ===========================================================================
module                 what it owns
=====================  ===========================================================================
run_size               the global batch split into processes x micro-batch x accumulation, the
                       step budget (max_steps or epochs), resolved for a number of processes
accelerator            the Accelerator (single process / DDP / DeepSpeed ZeRO) and the DeepSpeed
                       values the recipe owns
model                  the tokenizer and the retrofitted model (trainable weights in fp32)
batches                the global batch stream, identical on every rank
objectives             one class per training objective (flexmdm, mdm): noise the global batch
                       once -> the noised batch shards itself into micro-batches -> loss
optim                  AdamW over the adapter's parameter groups, warmup + cosine lr
checkpointing          atomic checkpoints, keep-last-K, resume, the model export
metrics                metrics.jsonl and the tensorboard / wandb trackers
hub_push               the push_to_hub preflight, background checkpoint uploads, the final push
=====================  ===========================================================================

The file names of a run directory live one layer down, in :mod:`retrofit.checkpoint_names`
(standard library only), so ``retrofit.hub`` and the demo can read a run by the same names.
"""
