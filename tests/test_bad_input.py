"""Issue 21, point 3: every bad input to every command is one line on stderr and exit status 2,
before any work starts: the table below, command by command, flag by flag. Each case runs the CLI
in this process (`stablelab.cli.main`), so a case that started training would show as a slow test
and one that raised would show its traceback."""

from __future__ import annotations

import pytest

from stablelab.cli import main

# (command, flags, a fragment the one line must hold; an unreachable --address: tests/proxy); {tmp} is the test's folder, {file} a file,
# {corrupt} a folder whose sweep.json is truncated, {foreign} one holding another tool's sweep.json
TABLE = [
    # the proxy study (the main job)
    ("proxy", "--steps 0", "--steps must be positive"),
    ("proxy", "--steps abc", "cannot read 'abc' as int"),
    ("proxy", "--lrs ''", "--lrs is empty"),
    ("proxy", "--lrs 1e-3,-1", "learning rates must be positive"),
    ("proxy", "--seeds 0", "--seeds must be positive"),
    ("proxy", "--batch-size 0", "--batch-size must be positive"),
    ("proxy", "--interval 1.5", "--interval must be in [0.5, 1)"),
    ("proxy", "--workers -1", "--workers must be at least 1"),
    ("proxy", "--device cuda", "CUDA is not available"),
    ("proxy", "--device foo", "is not a torch device"),
    ("proxy", "--corpus /nonexistent/corpus", "corpus not found"),
    ("proxy", "--out /proc/stablelab/out", "cannot create or write --out /proc/stablelab/out"),
    ("proxy", "--out {file}", "is a file, not a folder"),
    ("proxy", "--out {corrupt}", "sweep.json cannot be read"),
    ("proxy", "--out {foreign}", "holds a different grid"),
    ("proxy", "--seq-len 100000000 --widths 32,64,128", "--seq-len"),
    # the detection benchmark
    ("detect-bench", "--seeds 0", "seeds must be an integer >= 1"),
    ("detect-bench", "--calibration-seeds -1", "calibration seeds must be an integer >= 0"),
    ("detect-bench", "--detectors foo", "unknown detector set"),
    ("detect-bench", "--workers -1", "workers must be an integer >= 0"),
    ("detect-bench", "--device cuda", "is not available"),
    ("detect-bench", "--quick --seeds 1", "--quick keeps at least 2 held-out seeds"),
    ("detect-bench", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("detect-bench", "--out {file}", "is a file, not a folder"),
    # studies
    ("grok", "--steps 0", "--steps must be positive"),
    ("grok", "--p 1", "modulus p must be at least 2"),
    ("grok", "--train-fraction 1.5", "--train-fraction must be in [0, 1]"),
    ("grok", "--task foo", "unknown task 'foo'"),
    ("grok", "--dtype float16x", "--dtype must be one of"),
    ("grok", "--threads 0", "--threads must be at least 1"),
    ("grok", "--device cuda", "CUDA is not available"),
    ("grok", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("grok", "--out {file}", "is a file, not a folder"),
    ("eos", "--width 0", "--width must be positive"),
    ("eos", "--mse-lrs -0.1", "learning rates must be positive"),
    ("eos", "--tol 0", "--tol must be positive"),
    ("eos", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("eos", "--out {file}", "is a file, not a folder"),
    ("gap", "--benchmarks foo", "unknown benchmarks foo"),
    ("gap", "--learners foo", "unknown learners foo"),
    ("gap", "--tasks 3", "needs --tasks dividing 10 classes"),
    ("gap", "--seeds 0", "--seeds must be >= 1"),
    ("gap", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("gap", "--out {file}", "is a file, not a folder"),
    ("sgd-stability", "--batch-sizes 0", "--batch-sizes must be positive"),
    ("sgd-stability", "--max-steps -1", "--max-steps must be positive"),
    ("sgd-stability", "--adam-lrs abc", "cannot read 'abc'"),
    ("sgd-stability", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("sgd-stability", "--out {file}", "is a file, not a folder"),
    ("lowbit", "--sections foo", "unknown section 'foo'"),
    ("lowbit", "--reste-o 0.5", "--reste-o must be >= 1"),
    ("lowbit", "--steps 0", "--steps must be >= 10"),
    ("lowbit", "--device cuda", "CUDA is not available"),
    ("lowbit", "--out /proc/stablelab/out", "cannot create or write --out"),
    ("lowbit", "--out {file}", "is a file, not a folder"),
    # the run page
    ("report", "/nonexistent/run", "is not a folder"),
    ("report", "{file}", "is not a folder"),
    ("report", "{tmp}", "not a run folder"),
    ("report", "{torn}", "holds no readable row or event yet"),
    ("report", "{corrupt_run}", "metrics.jsonl cannot be read"),
    ("report", "{corrupt_run} --out /proc/stablelab/out", "metrics.jsonl cannot be read"),
]


@pytest.fixture
def places(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "sweep.json").write_text('{"widths": [32, 6')
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "sweep.json").write_text('{"tool": "someone else"}')
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "metrics.jsonl").write_text('{"step": 0, "lo')  # killed in its first line
    corrupt_run = tmp_path / "corrupt_run"
    corrupt_run.mkdir()
    (corrupt_run / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"tmp": empty, "file": file, "corrupt": corrupt, "foreign": foreign, "torn": torn,
            "corrupt_run": corrupt_run}


@pytest.mark.parametrize("command, flags, fragment", TABLE, ids=[f"{c} {f}" for c, f, _ in TABLE])
def test_bad_input_is_one_line_and_exit_2(command, flags, fragment, places, tmp_path, capsys):
    import shlex

    argv = [command, *shlex.split(flags.format(**places))]
    if command != "report" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if command in ("proxy", "detect-bench", "gap", "grok", "eos", "sgd-stability", "lowbit"):
        argv.append("--no-progress")
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"stablelab {command}: error:") and fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused input leaves no folder behind
