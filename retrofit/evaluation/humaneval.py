"""HumanEval infilling (openai/human-eval-infilling): data, completion normalisation, scoring.

A task is a prefix (`prompt`), a hole, and a `suffix`. The program that decides a completion is

    prompt + completion + suffix + "\\n" + test + "\\ncheck(" + entry_point + ")\\n"

run in the sandbox (`retrofit.evaluation.sandbox`). Completion normalisation is decided once here and
applied to every model alike (FlexMDM and the MDM baseline); raw and normalised pass@1 are both
reported:

* cut at the first end-of-text marker and delete every other special token / boundary marker
  (``<|endoftext|>``, ``<|eot_id|>``, ``<|mdm_mask|>``, ``</s>``, ``<prefix>``, ``<suffix>`` ...);
* single-line: drop leading blank lines, keep the first line, end it with exactly one ``\\n``;
* multi-line: strip trailing whitespace, end with exactly one ``\\n`` (a hole is whole lines, and a
  missing newline glues the next suffix line onto the completion);
* random-span: markers only (holes start and end mid-line).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrofit.evaluation.sandbox import ExecutionResult, Sandbox
from retrofit.evaluation.stats import mean_pass_at_k

UPSTREAM_COMMIT = "88062ff9859c875d04db115b698ed4b0f0395170"
UPSTREAM_URL = "https://raw.githubusercontent.com/openai/human-eval-infilling/{commit}/data/{file}"

# variant -> (file name, sha256 of the gzip file). Upstream's loader maps random-span to wrong names
# (`HumanEval-RandomSpan.jsonl.gz`); these are the names actually shipped.
VARIANTS: dict[str, tuple[str, str]] = {
    "single-line": ("HumanEval-SingleLineInfilling.jsonl.gz",
                    "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f"),
    "multi-line": ("HumanEval-MultiLineInfilling.jsonl.gz",
                   "2f341612eee1d35da1357a4f365e0c0b3ba6e2b62eb491e88aaefa4855af0349"),
    "random-span": ("HumanEval-RandomSpanInfilling.jsonl.gz",
                    "b4f330d8a8ff97bf85d9def497dffcae4d741e506449386a877236e422e33e8d"),
    "random-span-light": ("HumanEval-RandomSpanInfillingLight.jsonl.gz",
                          "1432250ecac0cb56e6f97f8faf0970419ef892a98fda7e1f5aa4c4b87209b760"),
}
LINE_LEVEL = ("single-line", "multi-line")
FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


@dataclass(frozen=True)
class InfillingTask:
    """One HumanEval infilling task (the six upstream fields)."""

    task_id: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def problem_id(self) -> str:
        """The HumanEval problem this hole comes from, e.g. "HumanEval/0"."""
        parts = self.task_id.split("/")
        return "/".join(parts[1:3]) if len(parts) >= 3 else self.task_id


def _read_jsonl_gz(data: bytes) -> list[dict]:
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return [json.loads(line) for line in io.StringIO(raw.decode("utf-8")) if line.strip()]


def _download(url: str, cache: Path, sha256: str) -> bytes:
    if cache.exists():
        return cache.read_bytes()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise RuntimeError(
            f"could not download {url} ({error}). Offline? Pass the local file or its folder with "
            "`--data PATH` (e.g. --data ../shared/data/humaneval_infilling/)."
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{url} has sha256 {digest}, expected {sha256}; refusing to use it")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(data)
    return data


def load_infilling_tasks(variant: str, data: str | Path | None = None,
                         cache_dir: str | Path | None = None) -> list[InfillingTask]:
    """Load a variant ("single-line", "multi-line", "random-span", "random-span-light").

    data: a `.jsonl(.gz)` file, or a folder holding the upstream file name; None downloads the file
    from openai/human-eval-infilling at a pinned commit (checked by sha256, cached in cache_dir,
    default ~/.cache/retrofit/humaneval_infilling).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown HumanEval infilling variant {variant!r}; choose from {sorted(VARIANTS)}")
    file_name, sha256 = VARIANTS[variant]
    if data is None:
        cache = Path(cache_dir or Path.home() / ".cache" / "retrofit" / "humaneval_infilling")
        raw = _download(UPSTREAM_URL.format(commit=UPSTREAM_COMMIT, file=file_name),
                        cache / file_name, sha256)
    else:
        path = Path(data)
        if path.is_dir():
            path = path / file_name
        if not path.exists():
            raise FileNotFoundError(f"--data {data}: no {file_name} there (HumanEval infilling "
                                    f"{variant}); pass the file or the folder that holds it")
        raw = path.read_bytes()
    tasks = []
    for record in _read_jsonl_gz(raw):
        missing = [name for name in FIELDS if name not in record]
        if missing:
            raise ValueError(f"{variant} record {record.get('task_id')!r} lacks fields {missing}")
        tasks.append(InfillingTask(**{name: record[name] for name in FIELDS}))
    return tasks


# ----------------------------------------------------------------------------- normalisation
END_MARKERS = ("<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_\-]*\|>|</?(?:s|pad|mask|eos|bos|prefix|suffix|middle|fim_\w+)>")


def strip_markers(completion: str, extra_markers: Sequence[str] = ()) -> str:
    """Cut at the first end-of-text marker and remove special tokens / boundary markers."""
    cut = len(completion)
    for marker in END_MARKERS:
        position = completion.find(marker)
        if position != -1:
            cut = min(cut, position)
    completion = completion[:cut]
    for marker in extra_markers:
        completion = completion.replace(marker, "")
    return _SPECIAL.sub("", completion)


def normalize_completion(completion: str, variant: str, extra_markers: Sequence[str] = ()) -> str:
    """The one normalisation applied to every model's completion (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown HumanEval infilling variant {variant!r}; choose from {sorted(VARIANTS)}")
    text = strip_markers(completion, extra_markers)
    if variant == "single-line":
        lines = [line for line in text.split("\n")]
        while lines and not lines[0].strip():
            lines.pop(0)
        first = lines[0].rstrip() if lines else ""
        return first + "\n"
    if variant == "multi-line":
        return text.rstrip() + "\n"
    return text


def build_program(task: InfillingTask, completion: str) -> str:
    """prompt + completion + suffix + test + check(entry_point), as the official harness runs it."""
    return (task.prompt + completion + task.suffix + "\n" + task.test + "\n"
            + f"check({task.entry_point})\n")


# ----------------------------------------------------------------------------- scoring
@dataclass
class CompletionVerdict:
    """Verdicts of one completion: raw text as given, and after normalisation."""

    task_id: str
    completion: str
    normalized: str
    raw: ExecutionResult
    normalized_result: ExecutionResult

    def to_dict(self) -> dict[str, object]:
        """Per-sample fields: the normalised verdict is the headline, the raw one is kept too."""
        return {
            "task_id": self.task_id,
            "completion": self.completion,
            "normalized_completion": self.normalized,
            "verdict": self.normalized_result.verdict,
            "passed": self.normalized_result.passed,
            "failure_bucket": self.normalized_result.category,
            "raw_verdict": self.raw.verdict,
            "raw_passed": self.raw.passed,
            "exec_time_s": round(self.normalized_result.duration_s, 4),
        }


def score_completions(
    tasks: Mapping[str, InfillingTask],
    completions: Iterable[tuple[str, str]],
    variant: str,
    sandbox: Sandbox,
    *,
    on_result=None,
) -> list[CompletionVerdict]:
    """Run (task_id, completion) pairs, raw and normalised; identical programs run once.

    on_result(verdict) is called as each completion's verdicts are known (progress bars).
    """
    pairs = list(completions)
    unknown = sorted({task_id for task_id, _ in pairs if task_id not in tasks})
    if unknown:
        raise KeyError(f"{len(unknown)} task_id(s) not in the {variant} data, e.g. {unknown[:3]}")
    programs: dict[str, int] = {}
    plan = []
    for task_id, completion in pairs:
        normalized = normalize_completion(completion, variant)
        keys = []
        for text in (completion, normalized):
            program = build_program(tasks[task_id], text)
            keys.append(programs.setdefault(program, len(programs)))
        plan.append((task_id, completion, normalized, keys))
    sources = list(programs)
    results: list[ExecutionResult | None] = [None] * len(sources)
    waiting: dict[int, list[int]] = defaultdict(list)
    for index, (_, _, _, keys) in enumerate(plan):
        for key in set(keys):
            waiting[key].append(index)
    verdicts: list[CompletionVerdict | None] = [None] * len(plan)

    def finish(index: int) -> None:
        task_id, completion, normalized, (raw_key, norm_key) = plan[index]
        verdicts[index] = CompletionVerdict(task_id, completion, normalized, results[raw_key],
                                            results[norm_key])
        if on_result is not None:
            on_result(verdicts[index])

    for key, result in sandbox.imap(sources):
        results[key] = result
        for index in waiting[key]:
            _, _, _, keys = plan[index]
            if verdicts[index] is None and all(results[k] is not None for k in keys):
                finish(index)
    return [verdict for verdict in verdicts if verdict is not None]


def summarize_verdicts(verdicts: Sequence[CompletionVerdict], ks: Sequence[int] = (1, 10, 100)
                       ) -> dict[str, object]:
    """pass@k (normalised, and raw pass@1) averaged over tasks, plus failure buckets."""
    per_task: dict[str, list[CompletionVerdict]] = defaultdict(list)
    for verdict in verdicts:
        per_task[verdict.task_id].append(verdict)
    if not per_task:
        raise ValueError("no verdicts to summarise")
    samples = [len(group) for group in per_task.values()]
    correct = [sum(v.normalized_result.passed for v in group) for group in per_task.values()]
    correct_raw = [sum(v.raw.passed for v in group) for group in per_task.values()]
    summary: dict[str, object] = {"num_tasks": len(per_task), "num_samples": len(verdicts)}
    for k in ks:
        if k <= min(samples):
            summary[f"pass@{k}"] = mean_pass_at_k(samples, correct, k)
    summary["raw_pass@1"] = mean_pass_at_k(samples, correct_raw, 1)
    buckets: dict[str, int] = defaultdict(int)
    for verdict in verdicts:
        buckets[verdict.normalized_result.category] += 1
    summary["failure_buckets"] = {name: buckets.get(name, 0)
                                  for name in ("passed", "syntax", "assertion", "timeout", "other")}
    return summary


__all__ = [
    "END_MARKERS",
    "VARIANTS",
    "CompletionVerdict",
    "InfillingTask",
    "build_program",
    "load_infilling_tasks",
    "normalize_completion",
    "score_completions",
    "strip_markers",
    "summarize_verdicts",
]
