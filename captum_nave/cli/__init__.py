"""The ``captum-nave`` command-line tool.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` where
``run(args) -> int`` returns the exit code. The dispatcher only calls the
public API through those modules.

Exit codes: 0 success, 1 unexpected internal error, 2 user error (bad
argument, missing file, unavailable model), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError"]

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS: List[str] = ["explain", "compare", "compare_registers", "concepts", "corloc", "report"]


class CLIError(Exception):
    """A user mistake: printed as one line without a traceback (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="captum-nave",
        description=(
            "NAVE (Neuro-Activated Vision Explanations): cluster the activations of a "
            "vision model into a segmentation of the input."
        ),
        epilog="Run 'captum-nave COMMAND --help' for the options and an example of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--device", default=None, help="torch device to run on, e.g. cpu or cuda:0 (default: cpu)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"captum_nave.cli.{name}")
        module.register(sub)
    return parser


def _error(msg: str) -> None:
    sys.stderr.write(f"captum-nave: error: {msg}\n")


def check_device(text: Optional[str]) -> None:
    """Refuse a ``--device`` that torch does not know or that this machine lacks (CLIError)."""
    if text is None:
        return
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(
            f"--device: expected a torch device such as cpu or cuda:0, got {text!r} "
            f"({str(exc).splitlines()[0]})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {text!r} requested but CUDA is not available on this machine")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``captum-nave``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    try:
        check_device(args.device)
        from captum_nave.distributed import device_for_rank, distributed_session

        # under torchrun / srun: one process group for the command ("cuda" -> cuda:LOCAL_RANK)
        with distributed_session(device=args.device) as launched:
            if launched:
                args.device = str(device_for_rank(args.device))
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 2 if not isinstance(exc, RuntimeError) or isinstance(exc, CLIError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
