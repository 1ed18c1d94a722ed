"""The `stablelab` command. It only parses arguments and dispatches; every command lives in its
study or report module, which provides `configure(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from stablelab.errors import UsageError

# name -> (module, one-line help). One registry for the CLI's commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("stablelab.studies.proxy", "LR x scale x mitigation sweep on small transformers"),
    "report": ("stablelab.report.run_page", "render one run's signals and events as HTML"),
    "grok": ("stablelab.studies.grok", "softmax collapse and grokking on modular arithmetic"),
    "eos": ("stablelab.studies.eos", "sharpness against 2/lr (edge of stability)"),
    "gap": ("stablelab.studies.gap", "continual evaluation and the stability gap"),
    "detect-bench": ("stablelab.bench.detect", "detection quality of the monitor and the anchors' spike rules"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (argparse's own convention)
        self.exit(2, f"stablelab: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stablelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # command not built in this version
                continue
            raise
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UsageError as error:
        print(f"stablelab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
