"""The ``captum-nave`` command-line tool.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` (``run(args) ->
int`` returns the exit code) and, optionally, ``check=check``: the argument checks that
need no model and no torch, run before anything heavy is imported. The dispatcher only
calls the public API through those modules.

Start-up is light: this package, the subcommand modules and :mod:`captum_nave` itself
import torch, timm, captum and matplotlib only when a command runs, so ``--help`` and
argument mistakes answer at once.

Exit codes: 0 success, 1 unexpected internal error, 2 user error (bad argument, missing
file, unavailable model), 130 interrupted (Ctrl-C, also when the interrupt arrives during
the imports or is swallowed by a library along the way).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from typing import Any, List, Optional, Sequence

from .common import CLIError

__all__ = ["main", "build_parser", "CLIError"]

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS: List[str] = ["explain", "compare", "compare_registers", "concepts", "corloc", "report"]


def _add_global_options(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    """``--debug``, ``--device``, ``--seed``: before the subcommand or after it.

    On a subcommand they default to ``SUPPRESS`` so that leaving them out there keeps
    the value given before the subcommand.
    """
    keep = argparse.SUPPRESS
    group = parser.add_argument_group("global options") if on_subcommand else parser
    group.add_argument("--debug", action="store_true", default=keep if on_subcommand else False,
                       help="show full tracebacks on errors")
    group.add_argument("--device", default=keep if on_subcommand else None,
                       help="torch device to run on, e.g. cpu or cuda:0 (default: cpu)")
    group.add_argument("--seed", type=int, default=keep if on_subcommand else 0, help="random seed (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="captum-nave",
        description=(
            "NAVE (Neuro-Activated Vision Explanations): cluster the activations of a "
            "vision model into a segmentation of the input."
        ),
        epilog=(
            "Run 'captum-nave COMMAND --help' for the options and an example of each command. "
            "--device, --seed and --debug may also follow the command."
        ),
    )
    _add_global_options(parser, on_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"captum_nave.cli.{name}")
        module.register(sub)
    for subparser in sub.choices.values():
        _add_global_options(subparser, on_subcommand=True)
    return parser


def _error(msg: str) -> None:
    sys.stderr.write(f"captum-nave: error: {msg}\n")


def check_device(text: Optional[str]) -> None:
    """Refuse a ``--device`` that torch does not know, that holds no data (``meta``) or
    that this machine lacks (``cuda``, ``mps``, ...), with a one-line CLIError."""
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
    if device.type == "cpu":
        return
    if device.type == "meta":
        raise CLIError(f"--device: {text!r} holds no data (shapes only); expected cpu, cuda[:N] or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {text!r} requested but CUDA is not available on this machine")
    backend = getattr(torch.backends, device.type, None) if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and not available():
        raise CLIError(f"--device: {text!r} requested but {device.type} is not available on this machine")
    try:
        torch.empty(1, device=device)
    except Exception as exc:  # any backend failure: a usable one-line message
        raise CLIError(f"--device: cannot use {text!r} on this machine ({str(exc).splitlines()[0]})") from None


class _Interrupts:
    """Turn Ctrl-C into KeyboardInterrupt and remember it, so an interrupt that a library
    swallows (e.g. in a ``__del__`` or a broad ``except``) still ends with exit code 130."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        raise KeyboardInterrupt

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # e.g. started with nohup: leave it ignored
                self._previous = previous
                signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``captum-nave``; returns the process exit code."""
    args: Any = None
    with _Interrupts() as interrupts:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 2
            logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
            check = getattr(args, "check", None)
            if check is not None:
                check(args)  # cheap argument checks: no torch, no model
            check_device(args.device)
            from captum_nave.distributed import device_for_rank, distributed_session

            # under torchrun / srun: one process group for the command ("cuda" -> cuda:LOCAL_RANK)
            with distributed_session(device=args.device) as launched:
                if launched:
                    args.device = str(device_for_rank(args.device))
                code = int(args.func(args) or 0)
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except Exception as exc:
            if interrupts.count:  # an interrupt a library turned into another error (any type: e.g.
                _error("interrupted")  # AttributeError from a module left half-imported)
                return 130
            if not isinstance(exc, (CLIError, ValueError, TypeError, RuntimeError, OSError)):
                raise  # a bug: the full traceback
            if getattr(args, "debug", False):
                traceback.print_exc()
            _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return 2 if not isinstance(exc, RuntimeError) or isinstance(exc, CLIError) else 1
        if interrupts.count:
            _error("interrupted")
            return 130
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
