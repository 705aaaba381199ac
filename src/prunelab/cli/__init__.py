"""The ``prunelab`` command: one module per subcommand; this file dispatches and reports errors.

An error prunelab raises on purpose (``errors.PrunelabError``: bad input, an output in the way) and an operating
system error about a path become one line on stderr and exit code 2. Anything else is a bug: its traceback and a
line saying so, exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import PrunelabError
from . import (adapt_cmd, analyze_cmd, compress_cmd, distill_cmd, drop_layers_cmd, export_onnx_cmd, finetune_cmd, inspect_cmd,
               pretrain_cmd, prune_cmd, prune_structured_cmd, prune_vocab_cmd, quantize_cmd, ship_cmd, speed_cmd, study_cmd)

COMMANDS = (inspect_cmd, prune_cmd, compress_cmd, pretrain_cmd, finetune_cmd, adapt_cmd, distill_cmd, study_cmd, analyze_cmd,
            drop_layers_cmd, prune_structured_cmd, prune_vocab_cmd, export_onnx_cmd, quantize_cmd, speed_cmd, ship_cmd)
# What an interrupted command leaves behind; commands not named here write nothing, or write atomically.
_RESUMABLE = "interrupted; {out} keeps what was finished: run the same command with --resume to continue"
INTERRUPTED = {
    "pretrain": _RESUMABLE, "finetune": _RESUMABLE, "adapt": _RESUMABLE, "distill-prune": _RESUMABLE,
    "study": "interrupted; finished runs are kept in {out}: run the same command again to continue",
    "analyze": "interrupted; {out} may hold some of the analysis's files (each one complete)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), exit code 2; its subcommands' parsers are its kind."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="prunelab", description="Prune pretrained transformer encoders.")
    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # loading and saving a model are short; their progress bars are noise here
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into `head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except PrunelabError as err:
        print(f"prunelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:  # not from the operating system: raised by some code on its own
            return internal_error(args.command)
        print(f"prunelab {args.command}: error: {err}", file=sys.stderr)  # names the path: no space, no permission, ...
        return 2
    except KeyboardInterrupt:
        print(f"prunelab {args.command}: {interrupted_message(args)}", file=sys.stderr)
        return 130
    except Exception:
        return internal_error(args.command)


def internal_error(command: str) -> int:
    """Show the exception being handled as a bug: its traceback, then one line saying what it is."""
    traceback.print_exc()
    kind, error = sys.exc_info()[:2]
    print(f"prunelab {command}: internal error ({kind.__name__}: {error}); this is a bug in prunelab, not in your "
          "input: please report it with the traceback above", file=sys.stderr)
    return 1


def interrupted_message(args) -> str:
    """What is true of the output after Ctrl-C in `args.command`."""
    if args.command == "study" and args.study_command != "run":
        return "interrupted; nothing was written"
    message = INTERRUPTED.get(args.command, "interrupted; nothing was written ({out} is unchanged)")
    return message.format(out=getattr(args, "out", None) or "the output")


if __name__ == "__main__":
    sys.exit(main())
