"""Results and traces of the samplers: what a call returns and what a trace callback receives."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

__all__ = ["FlexMDMSamplingResult", "MDMSamplingResult", "SamplingTrace", "TraceStep", "plot_trace"]


@dataclass
class TraceStep:
    """The state of one batch after ``step`` completed steps (``step = 0``: the initial state;
    FlexMDM: ``step = steps + 1`` with ``t = 1`` is the fill pass after the last step).

    ``row_ids`` are the indices of the batch's prompts in the input list; ``lengths`` the answer
    (infill: middle) lengths, ``n_clean`` / ``n_mask`` how many of those are clean / masked, and
    ``active`` whether the row still takes part in the forward passes; ``row_t`` (FlexMDM) each
    row's own time, which differs from ``t`` only once jumps (``jump_insertions``) moved rows apart.
    """

    batch_index: int
    step: int
    t: float
    row_ids: list[int]
    lengths: list[int]
    n_clean: list[int]
    n_mask: list[int]
    active: list[bool]
    row_t: list[float] | None = None


@dataclass
class SamplingTrace:
    """A trace callback that keeps every :class:`TraceStep` (pass it as ``trace=``)."""

    steps: list[TraceStep] = field(default_factory=list)

    def __call__(self, step: TraceStep) -> None:
        self.steps.append(step)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class FlexMDMSamplingResult:
    """What :func:`flexmdm_generate` returns, in the order of the input prompts.

    sequences: the generated answer (infilling: the middle) token ids of each prompt.
    full_sequences: prompt + answer (infilling: prefix + middle + suffix).
    lengths: (N,) answer lengths.
    steps: (N,) forward passes each row took part in (< ``steps`` when it stopped early,
        ``steps + 1`` when it held masks after the last step and took part in the fill pass).
    truncated: (N,) True where ``max_length`` cut the row's insertions at least once.
    num_forward_passes: model calls made in total (all batches).
    """

    sequences: list[list[int]]
    full_sequences: list[list[int]]
    lengths: Tensor
    steps: Tensor
    truncated: Tensor
    num_forward_passes: int


@dataclass
class MDMSamplingResult:
    """What :func:`mdm_generate` returns, in the order of the input prompts.

    sequences: the ``gen_length`` generated token ids of each prompt (EOS padding included).
    full_sequences: prompt + generated tokens.
    lengths: (N,) answer lengths: index of the first EOS in the generated tokens (``gen_length``
        when there is none, or when no EOS id is known).
    steps: sampling steps per prompt (``steps``).
    num_forward_passes: model calls made in total (all batches).
    """

    sequences: list[list[int]]
    full_sequences: list[list[int]]
    lengths: Tensor
    steps: int
    num_forward_passes: int



def plot_trace(trace: Iterable[TraceStep], path: str | Path, *, max_rows: int = 16) -> Path:
    """Plot answer length and clean-token count against t for up to ``max_rows`` prompts.

    trace: the :class:`TraceStep` records of one call (e.g. a :class:`SamplingTrace`); path: the
    image file to write (format from the suffix). Uses matplotlib's Agg backend (no display).
    Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    series: dict[int, dict[str, list[float]]] = {}
    for record in trace:
        for position, row_id in enumerate(record.row_ids):
            if row_id not in series and len(series) >= max_rows:
                continue
            data = series.setdefault(row_id, {"t": [], "length": [], "clean": []})
            data["t"].append(record.t)
            data["length"].append(record.lengths[position])
            data["clean"].append(record.n_clean[position])
    if not series:
        raise ValueError("the trace is empty: pass trace=SamplingTrace() to the sampler first")
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot(1, 1, 1)
    colors = matplotlib.colormaps["tab10"]
    for index, (row_id, data) in enumerate(sorted(series.items())):
        color = colors(index % 10)
        axes.plot(data["t"], data["length"], color=color, label=f"prompt {row_id} length")
        axes.plot(data["t"], data["clean"], color=color, linestyle="--")
    axes.set_xlabel("t")
    axes.set_ylabel("tokens (solid: answer length, dashed: clean)")
    axes.set_title("sampling trace")
    if len(series) <= 8:
        axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
