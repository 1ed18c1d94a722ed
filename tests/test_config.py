"""stablelab.config: flags, presets, validation, JSON and fingerprint derived from one dataclass;
the runtime options; and the CLI's lazy command table."""

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from stablelab import cli, config
from stablelab.config import Runtime, csv, each, positive, setting
from stablelab.run.runtime import checked, threads_scope
from stablelab.studies.command import Command
from stablelab.errors import UsageError


@dataclass(frozen=True)
class Toy:
    PRESETS: ClassVar[dict] = {"default": ({}, "plain"), "long": ({"steps": 500, "lrs": "0.1,0.2"}, "longer")}

    lrs: tuple[float, ...] = setting((1e-3, 1e-2), "learning rates", parse=csv(float), check=each(positive))
    steps: int = setting(100, "steps", check=positive)
    qk_norm: bool = setting(False, "per-head LayerNorm on q and k")
    label: str = setting("x", "a label", fingerprint=False)

    def check(self):
        return "steps must exceed the number of LRs" if self.steps <= len(self.lrs) else None


def _parse(argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Toy)
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in ("lrs", "steps", "qk_norm", "label")}
    return config.from_flags(Toy, values, args.preset)


def test_defaults_preset_then_flags():
    assert _parse([]) == Toy()
    assert _parse(["--preset", "long"]) == Toy(lrs=(0.1, 0.2), steps=500)
    # an explicit flag beats the preset, a bool flag parses both ways
    assert _parse(["--preset", "long", "--steps", "7", "--qk-norm"]) == Toy(lrs=(0.1, 0.2), steps=7, qk_norm=True)
    assert _parse(["--no-qk-norm"]).qk_norm is False


@pytest.mark.parametrize("argv, message", [
    (["--steps", "abc"], "--steps: cannot read 'abc'"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--lrs", "0.1,-1"], "--lrs must be positive, got -1.0"),
    (["--lrs", "0.1,0.1"], "duplicates"),
    (["--lrs", ""], "--lrs is empty"),
    (["--steps", "2"], "steps must exceed the number of LRs"),
])
def test_bad_values_give_one_line_naming_the_flag(argv, message):
    with pytest.raises(UsageError) as error:
        _parse(argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_help_lists_every_setting_with_its_default():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Toy)
    text = parser.format_help()
    for expected in ("--lrs", "(default 0.001,0.01)", "--steps", "(default 100)", "--qk-norm", "--preset",
                     "long: longer"):
        assert expected in text


def test_json_round_trip_and_fingerprint():
    toy = Toy(lrs=(0.5,), steps=9, label="run a")
    data = config.to_json(toy)
    assert data == {"lrs": [0.5], "steps": 9, "qk_norm": False, "label": "run a"}
    assert config.from_json(Toy, json.loads(json.dumps(data))) == toy
    # the label is not part of what the results depend on
    assert config.fingerprint(toy) == {"lrs": [0.5], "steps": 9, "qk_norm": False}
    assert config.differences(config.fingerprint(toy), config.fingerprint(Toy(lrs=(0.5,), steps=10))) == ["steps"]


def test_runtime_refuses_a_device_that_is_not_here():
    import torch

    with pytest.raises(UsageError, match="not a torch device"):
        checked(Runtime(device="gpu0"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            checked(Runtime(device="cuda"))
    with pytest.raises(UsageError, match="--threads must be at least 1"):
        checked(Runtime(threads=0))
    assert checked(Runtime(device="cpu")).device == "cpu"


def test_threads_are_restored_even_after_an_error():
    import torch

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError):
        with threads_scope(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("a failing study")
    assert torch.get_num_threads() == before


def test_command_derives_the_cli_and_writes_config_json(tmp_path):
    seen = {}

    def main(settings, runtime):
        seen["settings"], seen["runtime"] = settings, runtime
        config.write_config(runtime.out, settings, runtime)
        return 0

    command = Command(Toy, main, runtime=("out", "device", "threads"))
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(["--steps", "50", "--out", str(tmp_path), "--threads", "1"])
    assert command.run(args) == 0
    assert seen["settings"] == Toy(steps=50) and seen["runtime"].threads == 1
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["settings"]["steps"] == 50 and written["runtime"]["device"] == "cpu"


def test_cli_help_does_not_import_torch_or_any_study():
    code = ("import sys; from stablelab import cli; cli.build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('stablelab.studies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, stablelab; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_every_command_in_the_table_loads_and_configures():
    for name in cli.COMMANDS:
        configure, run = cli.load_command(name)
        parser = argparse.ArgumentParser()
        configure(parser)
        assert callable(run) and parser.format_help()


def test_an_unknown_module_in_the_table_is_an_error(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "nope", ("stablelab.studies.no_such_study", "a typo"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["nope", "--out", "x"])


def test_config_module_is_standard_library_only():
    import ast

    tree = ast.parse(Path(config.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert "torch" not in names and not any(n and n.startswith("stablelab.") and n != "stablelab.errors"
                                            for n in names)
    inner = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    inner |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert inner <= {"__future__", "argparse", "dataclasses", "json", "os", "pathlib", "typing",
                     "stablelab.errors", "stablelab.io"}, inner
