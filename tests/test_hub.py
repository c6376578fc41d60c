"""Hub push and load-by-id against a local Hub-compatible server (tests/hub_server.py).

The real `huggingface_hub` client code runs unchanged: `HF_ENDPOINT` (and the already-imported
`huggingface_hub.constants`) point at a server on 127.0.0.1, `HF_HUB_DISABLE_XET=1` selects the
LFS upload protocol the server implements, and `HF_HOME` is a temporary directory (a fresh cache).
The CLI test runs `retrofit push` in a subprocess with those variables set before import.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from hub_server import WRITE_TOKEN, LocalHub, hub_environment, local_hub  # noqa: F401 (fixture)
from huggingface_hub import constants as hf_constants
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from retrofit.adapter import FlexMDM
from retrofit.checkpoint_io import resolve_checkpoint
from retrofit.hub import (
    check_push_access,
    cli_main,
    find_eval_summaries,
    push_checkpoint,
    push_model,
    push_training_checkpoint,
    render_model_card,
)
from retrofit.models import LLaDAModelLM, tiny_llada_config

READ_TOKEN = "hf_test_read_token"
USER = "test-user"
REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "flexmdm_modules.safetensors", "retrofit_config.json"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
PUSHED_FILES = ADAPTER_FILES | TOKENIZER_FILES | {"README.md", ".gitattributes"}


def tree_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative path -> hex digest)."""
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


def fresh_cache(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(directory))


def run_card_snippet(card: str) -> str:
    """Execute the Python usage snippet of a model card as a user would paste it; returns its stdout."""
    assert card.count("```python\n") == 1, "the card should hold exactly one Python snippet"
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(compile(code, "<model card usage snippet>", "exec"), {"__name__": "__model_card__"})  # noqa: S102
    return printed.getvalue()


def word_tokenizer(directory: Path) -> None:
    """Save the tiny word-level tokenizer the test checkpoints carry (t0..t124, [UNK])."""
    tokenizer_object = Tokenizer(WordLevel({f"t{index}": index for index in range(125)} | {"[UNK]": 125}, "[UNK]"))
    tokenizer_object.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, mask_token="[MASK]", eos_token="[EOS]",
                            pad_token="[EOS]").save_pretrained(directory)


def model_outputs(model: FlexMDM) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, L, V) and gaps (B, L+1) on a fixed batch."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 120, (2, 9), generator=generator)  # (B, L)
    lengths = torch.tensor([9, 5])
    times = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        output = model(input_ids, lengths, times)
    return output.logits, output.gaps


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local Hub for the module, with the client pointed at it (restored afterwards)."""
    server = LocalHub().start()
    server.state.tokens[READ_TOKEN] = (USER, "read")
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        hub_environment(patch, server.url, home)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def run_dir(hub, tmp_path_factory) -> Path:
    """A training run: a tiny base pushed to the local Hub, a trained-looking checkpoint, records, evals."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    base_dir = run / "base"
    LLaDAModelLM(tiny_llada_config()).save_pretrained(base_dir)
    (base_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny base\n")
    api = huggingface_hub.HfApi()
    api.create_repo(f"{USER}/tiny-base")
    api.upload_folder(repo_id=f"{USER}/tiny-base", folder_path=base_dir, commit_message="tiny base")

    model = FlexMDM.retrofit(f"{USER}/tiny-base", "tiny-llada")
    with torch.no_grad():  # move the trainable parts away from their init so a wrong load shows
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    checkpoint = run / "checkpoint-20"
    model.save_pretrained(checkpoint)
    # What a training run leaves next to the adapter, none of which may be uploaded.
    (checkpoint / "optimizer.pt").write_bytes(os.urandom(256))
    (checkpoint / "rng_state.pth").write_bytes(os.urandom(64))
    (checkpoint / "model.safetensors").write_bytes(os.urandom(512))  # e.g. a copy of frozen base weights
    (checkpoint / "logs").mkdir()
    (checkpoint / "logs" / "events.txt").write_text("step 1\n")

    word_tokenizer(checkpoint)
    # The records retrofit.train writes in the run directory.
    (run / "recipe.yaml").write_text(yaml.safe_dump({"recipe": "recipes/tiny/flexmdm-gsm8k.yaml",
                                                     "data": {"kind": "gsm8k", "path": None}}))
    (run / "train_summary.json").write_text(json.dumps({
        "steps": 20, "tokens": 40960, "elapsed_s": 12.5, "objective": "flexmdm", "base_model": f"{USER}/tiny-base",
        "final_loss": 3.2109375, "recipe": "recipes/tiny/flexmdm-gsm8k.yaml", "resumed_from": None,
    }))
    # summary.json files as `retrofit eval ... --output run/eval/NAME` writes them.
    evals = {
        "gsm8k": {
            "benchmark": "gsm8k", "task": "gsm8k", "num_samples": 20, "num_tasks": 20,
            "strict_accuracy": 0.25, "strict_interval_95": [0.1, 0.45], "flexible_accuracy": 0.35,
            "flexible_interval_95": [0.2, 0.55], "metric": "strict_accuracy", "value": 0.25,
            "interval_95": [0.1, 0.45], "lengths": {"unit": "tokens", "wasserstein_1": 12.75},
            "model": {"model": str(checkpoint), "revision": None, "kind": "flexmdm"},
            "spec": {"name": "gsm8k", "data": {"hub": "openai/gsm8k", "config": "main", "split": "test"}},
        },
        "infill": {
            "benchmark": "humaneval-infill-single-line", "task": "humaneval_infill", "num_samples": 8,
            "pass@1": 0.125, "raw_pass@1": 0.0, "interval_95": [0.02, 0.47], "metric": "pass@1", "value": 0.125,
            "lengths": {"unit": "tokens", "wasserstein_1": 4.5},
        },
        "lengths": {"benchmark": "lengths", "task": "lengths", "num_samples": 16, "metric": "wasserstein_1",
                    "value": 3.5, "lengths": {"unit": "tokens", "wasserstein_1": 3.5}},
        "other-checkpoint": {"benchmark": "gsm8k-other", "strict_accuracy": 0.99,
                             "model": {"model": str(base_dir)}},
    }
    for name, summary in evals.items():
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def pushed(hub, run_dir):
    """The checkpoint pushed once to main: (repo id, commit url, local hashes before the push)."""
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    url = push_checkpoint(checkpoint, f"{USER}/tiny-flexmdm")
    return f"{USER}/tiny-flexmdm", url, before


def test_push_uploads_exactly_the_adapter_and_a_parsable_card(hub, run_dir, pushed):
    repo_id, url, before = pushed
    checkpoint = run_dir / "checkpoint-20"
    files = hub.state.files(repo_id)
    assert set(files) == PUSHED_FILES
    for name in ADAPTER_FILES | TOKENIZER_FILES:
        assert files[name] == (checkpoint / name).read_bytes(), name
    repo = hub.state.repo(repo_id)
    history = repo.history("main")
    assert len(history) == 2 and history[1].title == "initial commit"  # one commit for the whole upload
    assert url.endswith(history[0].oid)
    assert tree_hashes(checkpoint) == before
    # The base model is pinned to the commit it was retrofitted from.
    base_commit = hub.state.repo(f"{USER}/tiny-base").branches["main"]
    assert json.loads(files["retrofit_config.json"])["base_revision"] == base_commit

    card = huggingface_hub.ModelCard.load(repo_id)
    metadata = card.data.to_dict()
    front_matter = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front_matter["library_name"] == "retrofit" == metadata["library_name"]
    assert {"flexmdm", "masked-diffusion"} <= set(metadata["tags"])
    assert metadata["base_model"] == f"{USER}/tiny-base"
    assert metadata["license"] == "apache-2.0"  # inherited from the base model's card
    assert metadata["datasets"] == ["openai/gsm8k"]
    results = {(result.dataset_name, result.metric_type): result for result in card.data.eval_results}
    assert results[("gsm8k", "strict_accuracy")].metric_value == 0.25
    assert results[("gsm8k", "strict_accuracy")].dataset_type == "openai/gsm8k"
    assert results[("gsm8k", "strict_accuracy")].dataset_split == "test"
    assert results[("gsm8k", "flexible_accuracy")].metric_value == 0.35
    assert results[("gsm8k", "wasserstein_1")].metric_value == 12.75
    assert results[("humaneval-infill-single-line", "pass@1")].metric_value == 0.125
    assert results[("lengths", "wasserstein_1")].metric_value == 3.5
    assert not any(name == "gsm8k-other" for name, _ in results)  # another checkpoint's eval
    text = card.text
    assert "20 optimizer steps" in text and "40,960 training tokens" in text
    assert "| gsm8k | strict_accuracy | 0.25 | [0.1, 0.45] | 20 |" in text
    assert "| humaneval-infill-single-line | pass@1 | 0.125 | [0.02, 0.47] | 8 |" in text
    assert "3.2109375" in text and "linear" in text and "r=8" in text
    assert f'Pipeline.from_pretrained("{repo_id}")' in text  # the usage snippet loads the repo
    assert f"retrofit generate --model {repo_id}" in text


def test_load_by_repo_id_matches_local_checkpoint_and_works_offline(hub, run_dir, pushed, tmp_path, monkeypatch):
    repo_id, url, _ = pushed
    local_logits, local_gaps = model_outputs(FlexMDM.from_pretrained(run_dir / "checkpoint-20"))

    fresh_cache(monkeypatch, tmp_path / "cache")
    logits, gaps = model_outputs(FlexMDM.from_pretrained(repo_id))
    assert torch.equal(logits, local_logits) and torch.equal(gaps, local_gaps)
    assert (tmp_path / "cache" / f"models--{USER}--tiny-flexmdm").is_dir()
    assert (tmp_path / "cache" / f"models--{USER}--tiny-base").is_dir()  # the base it names came too

    commit = url.rsplit("/", 1)[-1]
    pinned = resolve_checkpoint(repo_id, revision=commit)
    assert pinned.name == commit and {path.name for path in pinned.iterdir()} >= ADAPTER_FILES

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    requests_before = len(hub.state.requests)
    logits, gaps = model_outputs(FlexMDM.from_pretrained(repo_id))
    assert torch.equal(logits, local_logits) and torch.equal(gaps, local_gaps)
    assert len(hub.state.requests) == requests_before  # served from the cache alone
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_checkpoint(f"{USER}/never-pushed")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        FlexMDM.from_pretrained(f"{USER}/never-pushed")
    with pytest.raises(FileNotFoundError, match="not .*in the local Hugging Face cache"):
        resolve_checkpoint(repo_id, revision="step-000999")


def test_resolve_checkpoint_errors(hub, pushed, tmp_path):
    repo_id, _, _ = pushed
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        resolve_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="has no revision 'no-such-branch'"):
        resolve_checkpoint(repo_id, revision="no-such-branch")
    with pytest.raises(FileNotFoundError, match="no repository"):
        resolve_checkpoint(f"{USER}/does-not-exist")
    assert resolve_checkpoint(tmp_path) == tmp_path.resolve()


def test_training_checkpoint_to_branch_and_cli_push(hub, run_dir, capsys):
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    push_training_checkpoint(checkpoint, f"{USER}/tiny-run", step=20, mode="branch", verify=False)
    repo = hub.state.repo(f"{USER}/tiny-run")
    assert set(repo.branches) == {"main", "step-000020"}
    assert set(hub.state.files(f"{USER}/tiny-run", "main")) == {".gitattributes"}  # main untouched
    assert set(hub.state.files(f"{USER}/tiny-run", "step-000020")) == PUSHED_FILES

    assert cli_main([str(checkpoint), "--repo-id", f"{USER}/tiny-run", "--revision", "v1", "--private",
                     "--eval", str(run_dir / "eval" / "lengths")]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{hub.url}/{USER}/tiny-run/commit/")
    card = hub.state.files(f"{USER}/tiny-run", "v1")["README.md"].decode()
    assert "wasserstein" in card and "strict_accuracy" not in card  # only the evals asked for
    assert tree_hashes(checkpoint) == before


def test_push_model_saves_a_live_model_and_pushes_it(hub, run_dir):
    model = FlexMDM.from_pretrained(run_dir / "checkpoint-20")
    push_model(model, f"{USER}/from-live-model", verify=False)
    push_model(model, f"{USER}/from-push-to-hub", verify=False)
    via_method = hub.state.files(f"{USER}/from-push-to-hub")
    via_function = hub.state.files(f"{USER}/from-live-model")
    assert set(via_method) == set(via_function)
    assert via_method["adapter_model.safetensors"] == via_function["adapter_model.safetensors"]
    files = hub.state.files(f"{USER}/from-live-model")
    assert set(files) == ADAPTER_FILES | {"README.md", ".gitattributes"}
    assert files["adapter_model.safetensors"] == (run_dir / "checkpoint-20" / "adapter_model.safetensors").read_bytes()


def test_merged_push_uploads_a_standalone_export(hub, run_dir):
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    push_checkpoint(checkpoint, f"{USER}/tiny-merged", merged=True)
    files = hub.state.files(f"{USER}/tiny-merged")
    assert set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors",
                          "flexmdm_modules.safetensors", "retrofit_config.json"} | TOKENIZER_FILES
    assert json.loads(files["retrofit_config.json"])["merged"] is True
    assert "base_model_relation: finetune" in files["README.md"].decode()
    merged_logits, merged_gaps = model_outputs(FlexMDM.from_pretrained(f"{USER}/tiny-merged"))
    local_logits, local_gaps = model_outputs(FlexMDM.from_pretrained(checkpoint))
    torch.testing.assert_close(merged_logits, local_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged_gaps, local_gaps, rtol=1e-4, atol=1e-4)
    assert tree_hashes(checkpoint) == before


def test_missing_token_is_a_clear_error(hub, run_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    with pytest.raises(PermissionError, match="no Hugging Face token found: set HF_TOKEN"):
        push_checkpoint(checkpoint, f"{USER}/no-token")
    with pytest.raises(PermissionError, match="no Hugging Face token found"):
        check_push_access(f"{USER}/no-token")
    assert hub.state.repo(f"{USER}/no-token") is None
    assert tree_hashes(checkpoint) == before


def test_rejected_token_via_cli_subprocess(hub, run_dir, tmp_path):
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_XET="1",
               PYTHONPATH=str(REPO_ROOT))
    env["HF_TOKEN"] = "hf_not_a_real_token"
    result = subprocess.run(
        [sys.executable, "-m", "retrofit.cli", "push", str(checkpoint), "--repo-id", f"{USER}/bad-token"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr  # issue 14: every command fails with exit code 2
    assert "rejected the token from HF_TOKEN" in result.stderr and "HTTP 401" in result.stderr
    assert hub.state.repo(f"{USER}/bad-token") is None
    assert tree_hashes(checkpoint) == before


def test_read_only_token_is_refused_before_uploading(hub, run_dir, monkeypatch):
    assert check_push_access(f"{USER}/anything") == USER  # the preflight a training run calls first
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with pytest.raises(PermissionError, match="read-only"):
        check_push_access(f"{USER}/anything")
    with pytest.raises(PermissionError, match="token from HF_TOKEN is read-only"):
        push_checkpoint(run_dir / "checkpoint-20", f"{USER}/read-only")
    # A token the Hub accepts at whoami but refuses on write (e.g. no rights to the namespace): 403.
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    with pytest.raises(PermissionError, match=r"rejected the token from HF_TOKEN .*\(HTTP 403\)"):
        push_checkpoint(run_dir / "checkpoint-20", "someone-else/model", verify=False)
    assert hub.state.repo(f"{USER}/read-only") is None and hub.state.repo("someone-else/model") is None


def test_checkpoint_without_config_or_that_fails_to_load_is_refused(hub, run_dir, tmp_path):
    source = run_dir / "checkpoint-20"
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    for name in ADAPTER_FILES - {"retrofit_config.json"}:
        (no_config / name).write_bytes((source / name).read_bytes())
    with pytest.raises(ValueError, match="retrofit_config.json is missing"):
        push_checkpoint(no_config, f"{USER}/no-config")
    assert cli_main([str(no_config), "--repo-id", f"{USER}/no-config"]) == 2

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ADAPTER_FILES:
        (broken / name).write_bytes((source / name).read_bytes())
    (broken / "flexmdm_modules.safetensors").write_bytes(b"not a safetensors file")
    before = tree_hashes(broken)
    with pytest.raises(ValueError, match="does not load with FlexMDM.from_pretrained"):
        push_checkpoint(broken, f"{USER}/broken")
    assert tree_hashes(broken) == before
    assert hub.state.repo(f"{USER}/no-config") is None and hub.state.repo(f"{USER}/broken") is None


@pytest.mark.parametrize("endpoint", ["commit", "lfs_put", "lfs_batch"])
def test_network_failure_mid_upload(hub, run_dir, monkeypatch, endpoint):
    checkpoint = run_dir / "checkpoint-20"
    before = tree_hashes(checkpoint)
    repo_id = f"{USER}/flaky-{endpoint.replace('_', '-')}"
    # http_backoff retries the LFS calls: drop every attempt, and make the retries instant.
    monkeypatch.setattr("huggingface_hub.utils._http.time", SimpleNamespace(sleep=lambda seconds: None))
    hub.state.lfs_objects.clear()  # so that the large files really are sent (no deduplication)
    hub.state.inject_fault(endpoint, times=100)
    try:
        with pytest.raises(ConnectionError, match="network failure while pushing .*Nothing was committed"):
            push_checkpoint(checkpoint, repo_id, verify=False)
    finally:
        hub.state.faults.clear()
    assert [commit.title for commit in hub.state.repo(repo_id).history()] == ["initial commit"]
    assert tree_hashes(checkpoint) == before
    push_checkpoint(checkpoint, repo_id, verify=False)  # the same push succeeds once the network is back
    assert set(hub.state.files(repo_id)) == PUSHED_FILES


def test_card_metadata_for_a_hub_base_and_no_records(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "retrofit_config.json").write_text(json.dumps({
        "kind": "mdm", "base_model": "GSAI-ML/LLaDA-8B-Base", "base_revision": "abc123", "weights": "adapter",
        "insertion_schedule": "linear", "unmasking_schedule": "cosine", "lora": None,
    }))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # the base's card cannot be read: no license
        card = huggingface_hub.ModelCard(render_model_card(checkpoint, repo_id="me/baseline"))
    metadata = card.data.to_dict()
    assert metadata["base_model"] == "GSAI-ML/LLaDA-8B-Base" and metadata["base_model_relation"] == "adapter"
    assert "license" not in metadata and "model-index" not in metadata and "datasets" not in metadata
    assert "mdm-baseline" in metadata["tags"] and "flexmdm" not in metadata["tags"]
    assert "No training record" in card.text and "No evaluation results" in card.text

    # An intermediate checkpoint of a run (checkpoint-N/model): its trainer_state.json is the record.
    model_dir = tmp_path / "run" / "checkpoint-5" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "retrofit_config.json").write_text((checkpoint / "retrofit_config.json").read_text())
    (model_dir.parent / "trainer_state.json").write_text(json.dumps({"step": 5, "tokens": 1280, "loss": 4.5}))
    (tmp_path / "run" / "train_summary.json").write_text(json.dumps({"steps": 50, "tokens": 12800}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        text = render_model_card(model_dir)
    assert "Trained for 5 optimizer steps on 1,280 training tokens." in text and "12,800" not in text


def test_local_hub_hides_private_repos_and_reports_missing_files(local_hub, monkeypatch, tmp_path):  # noqa: F811
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    api = huggingface_hub.HfApi()
    api.create_repo(f"{USER}/secret", private=True)
    (tmp_path / "a.json").write_text("{}")
    api.upload_folder(repo_id=f"{USER}/secret", folder_path=tmp_path, allow_patterns="a.json")
    assert api.model_info(f"{USER}/secret").private is True
    with pytest.raises(EntryNotFoundError):
        huggingface_hub.hf_hub_download(f"{USER}/secret", "missing.json")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.HfApi().model_info(f"{USER}/secret")


def test_card_usage_snippet_runs_against_the_pushed_flexmdm(hub, pushed, tmp_path, monkeypatch):
    repo_id, _, _ = pushed
    card = hub.state.files(repo_id)["README.md"].decode()
    # The snippet goes through the one inference pipeline (training layout, recorded ids, stops).
    assert "Pipeline.from_pretrained(" in card and "pipe.generate([task])" in card
    assert 'tokenizer("' not in card  # prompts go through the training layout, not a raw tokenizer call
    fresh_cache(monkeypatch, tmp_path / "cache")  # everything the snippet loads comes from the Hub
    printed = run_card_snippet(card)
    assert (tmp_path / "cache" / f"models--{USER}--tiny-flexmdm").is_dir()
    # The snippet prompts and stops exactly like `retrofit generate` (greedy, same defaults).
    from retrofit.generate import cli_main as generate_main
    from retrofit.hub import USAGE_PROMPT

    cli_output = io.StringIO()
    with redirect_stdout(cli_output):
        assert generate_main(["--model", repo_id, "--prompt", USAGE_PROMPT, "--no-progress"]) == 0
    assert printed == cli_output.getvalue()


def test_card_usage_snippet_runs_for_an_mdm_checkpoint(hub, run_dir, tmp_path, monkeypatch):
    model = FlexMDM.retrofit(f"{USER}/tiny-base", "tiny-llada", kind="mdm")
    checkpoint = tmp_path / "mdm-checkpoint"
    model.save_pretrained(checkpoint)
    word_tokenizer(checkpoint)
    push_checkpoint(checkpoint, f"{USER}/tiny-mdm", verify=False)
    card = hub.state.files(f"{USER}/tiny-mdm")["README.md"].decode()
    assert "pipe.generate([task], settings)" in card and '"gen_length"' in card
    fresh_cache(monkeypatch, tmp_path / "cache")
    run_card_snippet(card)
    assert (tmp_path / "cache" / f"models--{USER}--tiny-mdm").is_dir()


def test_push_model_card_ignores_records_around_the_temporary_directory(hub, run_dir, tmp_path, monkeypatch):
    # Another run's records lying in the system temporary directory and above it.
    temp_root = tmp_path / "system-tmp"
    (temp_root / "eval" / "stray").mkdir(parents=True)
    (temp_root / "train_summary.json").write_text(json.dumps({"steps": 777, "tokens": 987654}))
    (temp_root / "recipe.yaml").write_text(yaml.safe_dump({"data": {"kind": "sft", "path": "stray-org/stray-data"}}))
    (temp_root / "eval" / "stray" / "summary.json").write_text(json.dumps(
        {"benchmark": "stray-benchmark", "strict_accuracy": 0.987, "metric": "strict_accuracy", "value": 0.987}))
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 555, "tokens": 123456}))
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))

    model = FlexMDM.from_pretrained(run_dir / "checkpoint-20")
    push_model(model, f"{USER}/live-no-strays", verify=False)
    card = hub.state.files(f"{USER}/live-no-strays")["README.md"].decode()
    for stray in ("777", "987,654", "987654", "555", "123,456", "stray-benchmark", "0.987", "stray-org"):
        assert stray not in card, stray
    assert "No training record" in card and "No evaluation results" in card
    # Explicitly given evals still make it into the card.
    push_model(model, f"{USER}/live-with-evals", verify=False, eval_paths=[run_dir / "eval" / "lengths"])
    card = hub.state.files(f"{USER}/live-with-evals")["README.md"].decode()
    assert "| lengths | wasserstein_1 | 3.5 |" in card and "stray-benchmark" not in card


def test_license_other_brings_its_name_and_link(hub, run_dir, tmp_path):
    api = huggingface_hub.HfApi()
    base_id = f"{USER}/other-license-base"
    api.create_repo(base_id)
    card_dir = tmp_path / "base-card"
    card_dir.mkdir()
    (card_dir / "README.md").write_text(
        "---\nlicense: other\nlicense_name: llada-license\nlicense_link: LICENSE\n---\n# base\n")
    api.upload_folder(repo_id=base_id, folder_path=card_dir)
    revision = hub.state.repo(base_id).branches["main"]
    config = json.loads((run_dir / "checkpoint-20" / "retrofit_config.json").read_text())

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "retrofit_config.json").write_text(json.dumps(config | {"base_model": base_id,
                                                                          "base_revision": revision}))
    metadata = huggingface_hub.ModelCard(render_model_card(checkpoint)).data.to_dict()
    assert metadata["license"] == "other" and metadata["license_name"] == "llada-license"
    assert metadata["license_link"] == f"{hub.url}/{base_id}/blob/{revision}/LICENSE"

    # A local base: an absolute link is kept, a link relative to the local directory is dropped.
    local_base = tmp_path / "local-base"
    local_base.mkdir()
    (local_base / "README.md").write_text(
        "---\nlicense: other\nlicense_name: my-license\nlicense_link: https://example.com/license\n---\n")
    (checkpoint / "retrofit_config.json").write_text(json.dumps(config | {"base_model": str(local_base)}))
    metadata = huggingface_hub.ModelCard(render_model_card(checkpoint)).data.to_dict()
    assert (metadata["license"], metadata["license_name"]) == ("other", "my-license")
    assert metadata["license_link"] == "https://example.com/license"
    (local_base / "README.md").write_text("---\nlicense: other\nlicense_name: my-license\nlicense_link: LICENSE\n---\n")
    metadata = huggingface_hub.ModelCard(render_model_card(checkpoint)).data.to_dict()
    assert metadata["license_name"] == "my-license" and "license_link" not in metadata


def test_eval_attribution_does_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "x"
    final = run / "final"
    final.mkdir(parents=True)
    (run / "checkpoint-5" / "model").mkdir(parents=True)
    (final / "retrofit_config.json").write_text(json.dumps({"kind": "flexmdm", "base_model": None}))
    digest = hashlib.sha256((final / "retrofit_config.json").read_bytes()).hexdigest()
    summaries = {
        "relative-self": {"model": {"model": "final"}},  # eval run from the run directory
        "relative-deep": {"model": {"model": "./runs/x/final"}},  # ... or from tmp_path
        "absolute-self": {"model": {"model": str(final), "retrofit_config_sha256": digest}},
        "moved-self": {"model": {"model": "/old/place/x/final"}},  # the run directory moved since
        "hub-id": {"model": {"model": "someone/some-model"}},  # cannot tell: kept
        "relative-other": {"model": {"model": "checkpoint-5/model"}},  # exists in the run directory
        "relative-gone": {"model": {"model": "outputs/x/checkpoint-2/model"}},
        "absolute-pruned": {"model": {"model": str(run / "checkpoint-3" / "model")}},
        "other-digest": {"model": {"model": "final", "retrofit_config_sha256": "0" * 64}},
    }
    for name, summary in summaries.items():
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "summary.json").write_text(json.dumps(summary))
    kept = {"relative-self", "relative-deep", "absolute-self", "moved-self", "hub-id"}
    # The current directory holds another run's "final" and "checkpoint-5/model": no influence.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "final").mkdir(parents=True)
    (elsewhere / "checkpoint-5" / "model").mkdir(parents=True)
    for cwd in (elsewhere, run, tmp_path):
        monkeypatch.chdir(cwd)
        found = {path.parent.name for path in find_eval_summaries(final)}
        assert found == kept, cwd


def test_push_access_check_can_create_the_repo(hub):
    repo_id = f"{USER}/created-at-startup"
    assert check_push_access(repo_id, create=True, private=True) == USER
    repo = hub.state.repo(repo_id)
    assert repo is not None and repo.private
    assert [commit.title for commit in repo.history()] == ["initial commit"]
    assert check_push_access(repo_id, create=True) == USER  # an existing repo is fine (and unchanged)
    assert hub.state.repo(repo_id).private and len(hub.state.repo(repo_id).history()) == 1
    # whoami accepts the token, but it may not write to another namespace: caught here, not later.
    with pytest.raises(PermissionError, match=r"rejected the token from HF_TOKEN .*\(HTTP 403\)"):
        check_push_access("someone-else/created-at-startup", create=True)
    assert check_push_access("someone-else/created-at-startup") == USER  # without create it cannot tell
    assert hub.state.repo("someone-else/created-at-startup") is None
