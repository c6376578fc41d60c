"""Training metrics: ``output_dir/metrics.jsonl`` always, tensorboard / wandb when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrofit.checkpoint_names import METRICS_FILE
from retrofit.config import TrainConfig, to_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["MetricsWriter", "flatten_config"]


class MetricsWriter:
    """Metrics to ``output_dir/metrics.jsonl`` (main process, always) and to the accelerate trackers
    (tensorboard / wandb) when ``logging.report_to`` names them."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, resume_step: int) -> None:
        self.accelerator = accelerator
        self.path = Path(cfg.output_dir) / METRICS_FILE
        self.trackers = bool(cfg.logging.report_to)
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A resumed run rewrites history after its checkpoint: drop lines the killed run logged
            # past it, so the file holds one continuous curve.
            if self.path.is_file():
                kept = [
                    line
                    for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step
                ]
                self.path.write_text("".join(line + "\n" for line in kept))
        if self.trackers:
            accelerator.init_trackers(
                cfg.logging.project,
                config=flatten_config(to_dict(cfg)),
                init_kwargs={"wandb": {"name": cfg.logging.run_name}}
                if cfg.logging.run_name
                else {},
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append one record (main process) and forward the numbers to the trackers."""
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.trackers:
            self.accelerator.log(
                {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step
            )

    def close(self) -> None:
        """Finish the trackers."""
        if self.trackers:
            self.accelerator.end_training()


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config for trackers (``optimizer.lr`` -> value; lists as strings)."""
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    value = tree if isinstance(tree, (int, float, str, bool)) else str(tree)
    return {prefix[:-1]: value}
