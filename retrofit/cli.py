"""The `retrofit` command: one entry point that dispatches to each subcommand's module.

Subcommands are imported lazily so `retrofit --help` stays fast (torch and transformers take
seconds to import) and a broken optional dependency only affects the command that needs it. A
failing command prints one line, `retrofit <command>: <message>`, and exits 2
(:mod:`retrofit.console`; `--debug` or RETROFIT_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import retrofit
from retrofit.console import run_command

# subcommand -> (module, one-line description). Each module exposes `cli_main(argv) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("retrofit.demo", "run the CPU demo: pretrain a tiny MDM, retrofit it, compare with the MDM baseline"),
    "train": ("retrofit.train", "train from a recipe YAML (also: accelerate launch -m retrofit.train)"),
    "generate": ("retrofit.generate", "sample from a checkpoint (FlexMDM insert+unmask or MDM baseline)"),
    "eval": ("retrofit.evaluate", "run a benchmark spec (eval/*.yaml) on a checkpoint or on completions"),
    "compare": ("retrofit.evaluate", "paired comparison of two eval result directories"),
    "merge": ("retrofit.adapter", "export a merged standalone checkpoint (LoRA folded into the backbone)"),
    "push": ("retrofit.hub", "push a checkpoint with a generated model card to the Hugging Face Hub"),
    "lm-eval": ("retrofit.lm_eval", "run lm-evaluation-harness tasks on a checkpoint (pip install '.[lm-eval]')"),
    "bpt": ("retrofit.bits_per_token", "bits per token (bound) of checkpoints on held-out data, side by side"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"retrofit {retrofit.__version__}: retrofit masked diffusion LMs into FlexMDMs",
        "",
        "usage: retrofit <command> [options]   (retrofit <command> --help for its options;",
        "       --debug or RETROFIT_DEBUG=1 shows a failing command's traceback)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `retrofit <command> ...`; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(retrofit.__version__)
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"retrofit: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    def run(arguments: list[str]) -> int | None:
        module = importlib.import_module(COMMANDS[command][0])
        entry = module.compare_cli_main if command == "compare" else module.cli_main
        return entry(arguments)

    return run_command(command, run, rest)


if __name__ == "__main__":
    sys.exit(main())
