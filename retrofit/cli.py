"""The `retrofit` command: one entry point that dispatches to each subcommand's module.

Subcommands are imported lazily so `retrofit --help` stays fast (torch and transformers take
seconds to import) and a broken optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import retrofit

# subcommand -> (module, one-line description). Each module exposes `cli_main(argv) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("retrofit.demo", "run the CPU demo: pretrain a tiny MDM, retrofit it, compare with the MDM baseline"),
    "train": ("retrofit.train", "train from a recipe YAML (also: accelerate launch -m retrofit.train)"),
    "generate": ("retrofit.generate", "sample from a checkpoint (FlexMDM insert+unmask or MDM baseline)"),
    "eval": ("retrofit.evaluate", "run a benchmark spec (eval/*.yaml) on a checkpoint or on completions"),
    "compare": ("retrofit.evaluate", "paired comparison of two eval result directories"),
    "merge": ("retrofit.adapter", "export a merged standalone checkpoint (LoRA folded into the backbone)"),
    "push": ("retrofit.hub", "push a checkpoint with a generated model card to the Hugging Face Hub"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"retrofit {retrofit.__version__}: retrofit masked diffusion LMs into FlexMDMs",
        "",
        "usage: retrofit <command> [options]   (retrofit <command> --help for its options)",
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
    module = importlib.import_module(COMMANDS[command][0])
    if command == "compare":
        return int(module.compare_cli_main(rest) or 0)
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
