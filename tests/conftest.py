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

import string
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Every test module starts with one torch thread, whatever a module before it set (the
    benchmark smoke runs take ``--threads``), and the count is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_data(*parts: str) -> Path:
    """A file or folder of the offline benchmark data in ``../shared/data``; skips the test with
    what to do when the shared folder is not beside the repository (CI always has it)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: clone the shared data folder beside the repository "
                    "(../shared/data holds the offline GSM8K and HumanEval-infilling copies)")
    return path


@pytest.fixture(scope="session")
def gsm8k_test() -> Path:
    """GSM8K's test split (JSON lines with question / answer)."""
    return shared_data("gsm8k", "test.jsonl")


@pytest.fixture(scope="session")
def humaneval_infilling() -> Path:
    """The folder of the HumanEval-infilling variants."""
    return shared_data("humaneval_infilling")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(kind="flexmdm", max_length=768)``: a tiny random LLaDA retrofitted as a
    FlexMDM or MDM baseline with a printable-character tokenizer saved beside it (special ids
    recorded at retrofit time); built once per (kind, max_length) and session."""
    import torch

    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config
    from retrofit.tokenization import build_char_tokenizer

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    # GSM8K questions hold a few non-ASCII characters (curly quotes): map them to <|unk|>.
    tokenizer = build_char_tokenizer(string.printable, eos_token="<|pad|>", unk_token="<|unk|>")
    ids = {"mask_token_id": tokenizer.mask_token_id, "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    LLaDAModelLM(tiny_llada_config(vocab_size=len(tokenizer), **ids)).save_pretrained(root / "base")
    built: dict[tuple[str, int], Path] = {}

    def build(kind: str = "flexmdm", max_length: int = 768) -> Path:
        if (kind, max_length) not in built:
            model = FlexMDM.retrofit(str(root / "base"), "tiny-llada", kind=kind, max_length=max_length,
                                     tokenizer=tokenizer, **ids)
            directory = model.save_pretrained(root / f"{kind}-{max_length}")
            tokenizer.save_pretrained(directory)
            built[kind, max_length] = directory
        return built[kind, max_length]

    return build
