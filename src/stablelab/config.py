"""One way to declare a study's settings: a frozen dataclass whose fields carry their help text,
parser and check, from which the CLI flags, `--help`, validation with one-line errors,
`config.json` and the sweep fingerprint are all derived.

    @dataclass(frozen=True)
    class MySettings:
        PRESETS: ClassVar[dict] = {"quick": ({"steps": 50}, "a one-minute look")}
        lrs: tuple[float, ...] = setting((1e-3, 1e-2), "peak learning rates", parse=csv(float),
                                         check=each(positive))
        steps: int = setting(200, "training steps per run", check=positive)

    settings = from_flags(MySettings, {"steps": "100"}, preset="quick")   # -> MySettings(...)

Runtime options (where and how a study runs, never what it computes) are one type, `Runtime`,
validated once before any work (`stablelab.run.runtime.checked`: a device that does not exist is
refused), and `stablelab.run.runtime.threads_scope` sets torch's thread count and restores it after.
`stablelab.studies.command.Command` joins a settings class, its runtime options and the study's
`main(settings, runtime)` into a CLI command.

Standard library only: importing this module does not import torch (the CLI builds `--help` from
it). Layer L0 in docs/design.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from stablelab.errors import UsageError

_MISSING = dataclasses.MISSING


def setting(default: Any, help: str, *, parse: Callable[[str], Any] | None = None,
            check: Callable[[Any], str | None] | None = None, flag: str | None = None,
            choices: tuple | None = None, fingerprint: bool = True, metavar: str | None = None) -> Any:
    """A dataclass field that is also a CLI flag.

    Args:
        default: the default value (tuples for list settings).
        help: the `--help` line; the default is appended to it.
        parse: text -> value (default: the type of `default`; `csv(kind)` for lists).
        check: value -> None if fine, else the reason it is not (one line).
        flag: the flag name without dashes (default: the field name with '-' for '_').
        choices: the allowed values.
        fingerprint: whether the value defines a study's results (a sweep resumes only when
            every fingerprint setting is unchanged); False for settings only the analysis reads.
    """
    return field(default=default, metadata={"help": help, "parse": parse, "check": check, "flag": flag,
                                            "choices": choices, "fingerprint": fingerprint,
                                            "metavar": metavar})


# -- parsers and checks ----------------------------------------------------------------------------
def csv(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    """'a,b,c' -> (kind(a), kind(b), kind(c)); duplicates are refused."""
    def parse(text: str) -> tuple:
        values = tuple(kind(v.strip()) for v in str(text).split(",") if v.strip())
        if len(set(values)) != len(values):
            raise ValueError(f"{text!r} has duplicates")
        return values
    parse.__name__ = f"comma-separated {getattr(kind, '__name__', 'value')}s"
    return parse


def boolean(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


def at_least(bound: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= bound else f"must be >= {bound:g}, got {value}"
    return check


def between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be in [{low:g}, {high:g}], got {value}"
    return check


def each(check: Callable[[Any], str | None]) -> Callable[[tuple], str | None]:
    """A check for every item of a list setting; an empty list is refused too."""
    def check_all(values: tuple) -> str | None:
        if not values:
            return "is empty"
        for value in values:
            problem = check(value)
            if problem:
                return problem
        return None
    return check_all


def one_of(names: Callable[[], Any] | tuple) -> Callable[[Any], str | None]:
    """Every name (or each of a tuple of names) must be in `names` (a tuple, or a function
    returning one, called late so registries load only when a study runs)."""
    def check(value: Any) -> str | None:
        known = tuple(names() if callable(names) else names)
        for name in (value if isinstance(value, tuple) else (value,)):
            if name not in known:
                return f"unknown {name!r}; known: {', '.join(map(str, known))}"
        return None
    return check


def by(lookup: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """A check that asks the registry where the names are defined: `lookup(name)` raises
    UsageError (its message is the reason) for an unknown name."""
    def check(value: Any) -> str | None:
        try:
            lookup(value)
        except UsageError as error:
            return str(error)
        return None
    return check


# -- the derivations -------------------------------------------------------------------------------
def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def _settings_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if "help" in f.metadata]


def setting_names(cls: type) -> list[str]:
    """The names of the fields declared with `setting` (the study's flags)."""
    return [f.name for f in _settings_fields(cls)]


def _parser_for(f: dataclasses.Field) -> Callable[[str], Any]:
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse
    if isinstance(f.default, bool):
        return boolean
    if f.default is None or f.default is _MISSING:
        return str
    return type(f.default)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per setting (default None, so that presets apply first and explicit flags win),
    `--preset` when the class has PRESETS. Values are parsed in `from_flags`, not by argparse, so
    every bad value gives the same one-line error."""
    presets = getattr(cls, "PRESETS", None)
    if presets:
        described = "; ".join(f"{name}: {text}" for name, (_, text) in presets.items()).replace("%", "%%")
        parser.add_argument("--preset", default="default", choices=sorted(presets),
                            help=f"named settings, explicit flags override ({described})")
    for f in _settings_fields(cls):
        name = flag_name(f)
        help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if f.default is not _MISSING and f.default not in (None, ""):
            help_text += f" (default {_show(f.default)})"
        if isinstance(f.default, bool) and f.metadata.get("parse") is None:
            parser.add_argument(f"--{name}", dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
            continue
        parser.add_argument(f"--{name}", dest=f.name, default=None, help=help_text,
                            metavar=f.metadata.get("metavar") or f.name.upper(),
                            choices=f.metadata.get("choices"))


def from_flags(cls: type, values: dict[str, Any], preset: str = "default") -> Any:
    """Defaults, then the preset, then `values` (text from the command line or typed values):
    parsed, checked, returned as an instance of `cls`. Raises UsageError, one line, naming the flag."""
    presets = getattr(cls, "PRESETS", None) or {}
    if preset not in presets and preset != "default":
        raise UsageError(f"unknown preset {preset!r}; known: {', '.join(sorted(presets))}")
    chosen = dict(presets.get(preset, ({}, ""))[0])
    known = {f.name: f for f in _settings_fields(cls)}
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise UsageError(f"preset {preset!r} sets unknown settings: {', '.join(unknown)}")
    chosen.update({k: v for k, v in values.items() if v is not None})
    kwargs = {}
    for name, value in chosen.items():
        if name not in known:
            raise UsageError(f"unknown setting {name!r}; known: {', '.join(known)}")
        kwargs[name] = parse_value(known[name], value)
    return validate(cls(**kwargs))


def parse_value(f: dataclasses.Field, value: Any) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    parse = _parser_for(f)
    try:
        return parse(value)
    except (TypeError, ValueError) as error:
        kind = getattr(parse, "__name__", "value")
        raise UsageError(f"--{flag_name(f)}: cannot read {value!r} as {kind} ({error})") from None


def validate(settings: Any) -> Any:
    """Every field's check, then the class's own `check()` for rules across fields (returns a
    reason or None). Returns `settings` unchanged."""
    for f in _settings_fields(type(settings)):
        value = getattr(settings, f.name)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UsageError(f"--{flag_name(f)}: {value!r} is not one of {', '.join(map(str, choices))}")
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:  # "--steps must be positive, got 0"; "--variants: unknown variant 'x'"
            joint = " " if problem.startswith(("must", "is ")) else ": "
            raise UsageError(f"--{flag_name(f)}{joint}{problem}")
    cross = getattr(settings, "check", None)
    problem = cross() if callable(cross) else None
    if problem:
        raise UsageError(problem)
    return settings


def to_json(settings: Any) -> dict[str, Any]:
    """The settings as plain JSON values (tuples become lists), every field."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def from_json(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of `to_json`, validated."""
    known = {f.name: f for f in fields(cls)}
    return validate(cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}))


def fingerprint(settings: Any) -> dict[str, Any]:
    """The settings that define a study's results: a sweep resumes only when these are unchanged."""
    data = to_json(settings)
    return {f.name: data[f.name] for f in _settings_fields(type(settings)) if f.metadata["fingerprint"]}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# -- runtime options -------------------------------------------------------------------------------
RUNTIME_OPTIONS = ("out", "device", "threads", "progress", "workers", "address")
_RUNTIME_HELP = {
    "out": "output folder (reused to resume)",
    "device": "torch device for training (cpu, cuda, cuda:1, mps)",
    "threads": "torch CPU threads for this process (default: torch's own choice); restored afterwards",
    "progress": "show a progress bar (--no-progress for logs)",
    "workers": "local worker processes (default: one per core)",
    "address": "a running Dask scheduler, tcp://HOST:PORT (default: an embedded LocalCluster)",
}


@dataclass(frozen=True)
class Runtime:
    """Where and how a study runs; never changes what it computes (not in the fingerprint)."""

    out: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    workers: int | None = None
    address: str | None = None

    def checked(self) -> "Runtime":
        """Refuse bad counts (threads or workers < 1). The device is checked by
        `stablelab.run.runtime.checked`, which needs torch."""
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        return self


def add_runtime_arguments(parser: argparse.ArgumentParser, options: tuple[str, ...],
                          out_required: bool = True, defaults: dict[str, Any] | None = None) -> None:
    """The runtime flags in `options`; `defaults` overrides Runtime's defaults for this command."""
    defaults = defaults or {}
    for name in options:
        if name not in RUNTIME_OPTIONS:
            raise ValueError(f"unknown runtime option {name!r}; known: {RUNTIME_OPTIONS}")
        if name == "out":
            parser.add_argument("--out", required=out_required, help=_RUNTIME_HELP["out"])
        elif name == "progress":
            parser.add_argument("--progress", dest="progress", default=True,
                                action=argparse.BooleanOptionalAction, help=_RUNTIME_HELP["progress"])
        elif name in ("threads", "workers"):
            help_text = _RUNTIME_HELP[name]
            if defaults.get(name) is not None:
                help_text = help_text.split(" (default")[0] + f" (default {defaults[name]})"
            parser.add_argument(f"--{name}", type=_int_flag(name), default=defaults.get(name), help=help_text)
        else:
            parser.add_argument(f"--{name}", default="cpu" if name == "device" else None,
                                help=_RUNTIME_HELP[name])


def _int_flag(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} must be an integer, got {text!r}") from None
    return parse


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    values = {name: getattr(args, name) for name in RUNTIME_OPTIONS if hasattr(args, name)}
    if values.get("out") is not None:
        values["out"] = Path(values["out"]).expanduser()
    return Runtime(**values)


def write_config(out: Path, settings: Any, runtime: Runtime, extra: dict | None = None) -> Path:
    """OUT/config.json: the settings, the runtime options and `extra`, written atomically."""
    from stablelab.io import atomic_write_json

    runtime_data = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(runtime).items()}
    path = Path(out) / "config.json"
    atomic_write_json(path, {"settings": to_json(settings), "runtime": runtime_data, **(extra or {}),
                             "pid": os.getpid()})
    return path


def ensure_out_folder(out: str | Path, flag: str = "--out", create: bool = True) -> Path:
    """`out` as a folder this process can write in; a UsageError (one line) when it is a file,
    cannot be created, or is not writable. The check creates the folder for real (the only sure
    test); with create=False the folders it made are removed again (they were empty, and ours), so
    input refused later leaves nothing behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder; use a new {flag}")
    missing, parent = [], out
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)  # innermost first
        parent = parent.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        writable = os.access(out, os.W_OK | os.X_OK)
    except OSError as error:
        raise UsageError(f"cannot create or write {flag} {out}: {error.strerror or error}") from None
    if not create or not writable:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:
                break
    if not writable:
        raise UsageError(f"cannot create or write {flag} {out}: permission denied")
    return out
