"""Test-wide settings: CPU only, no network, no telemetry, headless plots, one torch thread.

The tests use tiny models, for which a second intra-op thread only adds synchronisation cost (and
on a loaded 2-core machine makes small matmuls 10-40x slower), so torch runs single-threaded.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
