"""The `stablelab` command. It only parses arguments and dispatches. A command's module is imported
only when that command runs (`stablelab --help` imports neither torch nor any study); the module
provides `COMMAND` (a `stablelab.config.Command`: flags derived from its settings dataclass) or,
for commands that are not studies, `configure(parser)` and `run(args) -> int`. Every command needs the
`studies` extra (pyproject.toml); without it, a command says in one line what to install, before any work."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from stablelab.errors import UsageError

# name -> (module, one-line help). One registry for the CLI's commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("stablelab.studies.proxy", "LR x scale x mitigation sweep on small transformers"),
    "report": ("stablelab.report.run_page", "render one run's signals and events as HTML"),
    "diagnose": ("stablelab.diagnosis.command", "verdicts on training logs you already have (TensorBoard, CSV, HF, MLflow, JSONL)"),
    "grok": ("stablelab.studies.grok", "softmax collapse and grokking on modular arithmetic"),
    "eos": ("stablelab.studies.eos", "sharpness against 2/lr (edge of stability)"),
    "gap": ("stablelab.studies.gap", "continual evaluation and the stability gap"),
    "sgd-stability": ("stablelab.studies.sgd_stability", "SGD's trace bound, Adam at the edge, opposing signals, warm-up"),
    "detect-bench": ("stablelab.bench.detect", "detection quality of the monitor and the anchors' spike rules"),
    "lowbit": ("stablelab.studies.lowbit", "binary estimators, 8-bit optimizer states and 4-bit training (ReSTE, Stable-SPAM)"),
}

# Top-level modules of the `studies` extra (pyproject.toml), which a plain `pip install stablelab` lacks.
# Every command above needs it: each writes report.html with matplotlib, most also need the others.
STUDIES_EXTRA_MODULES = ("dask", "distributed", "duckdb", "pyarrow", "matplotlib", "sklearn")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def load_command(name: str):
    """(configure, run) of command `name`, importing its module. A module missing from the table's
    entry is an error (ModuleNotFoundError), never a silently dropped command."""
    module = importlib.import_module(COMMANDS[name][0])
    command = getattr(module, "COMMAND", None)
    if command is not None:
        return command.configure, command.run
    return module.configure, module.run


def missing_studies_module() -> str | None:
    """The first module of the `studies` extra that is not installed, else None. Imports none of them."""
    for module in STUDIES_EXTRA_MODULES:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):  # an import hook that refuses it, or a broken entry in sys.modules
            return module
    return None


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """The parser; only command `load` (if any) gets its flags, which imports its module."""
    parser = _Parser(prog="stablelab", description="find, predict and fix neural-network training instabilities")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            configure, run = load_command(name)
            configure(command)
            command.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in COMMANDS and missing_studies_module() is not None:  # checked first: a study may import it late
        print(f"stablelab {name} needs the studies extra: pip install 'stablelab[studies]'", file=sys.stderr)
        return 2
    parser = build_parser(load=name if name in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UsageError as error:
        print(f"stablelab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        from stablelab.io import out_of_space

        if not out_of_space(error):
            raise
        print(f"stablelab {args.command}: error: {error.strerror} writing {error.filename}; files already "
              "written are complete (each written to a temporary name, then renamed): free space and rerun "
              "the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
