"""A plain `pip install stablelab` (no extras) is enough for the Monitor, the optimizers, stablelab.nn
and stablelab.signals; the studies' and reports' dependencies are the `studies` extra (GitHub issue 26,
point 6). Each check runs in a fresh interpreter, so that what this test session imported does not
count. A light install is simulated by marking the studies' modules missing in sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from stablelab.cli import COMMANDS, STUDIES_EXTRA_MODULES, missing_studies_module

# The studies' dependencies (pyproject.toml's `studies` extra) and what they bring in.
HEAVY = ("dask", "distributed", "duckdb", "pyarrow", "matplotlib", "sklearn", "pandas", "scipy")

# Makes the named top-level modules (and so their submodules) missing, as in an environment without
# them: `import` raises ModuleNotFoundError and importlib.util.find_spec answers None.
BLOCKER = textwrap.dedent("""
    import sys

    def refuse(*names):
        for name in names:
            sys.modules[name] = None
""")

# The README's "In your own training loop" on a tiny model, writing a run folder.
TRAIN = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    import stablelab
    stablelab.Monitor
    import stablelab.nn, stablelab.optim, stablelab.signals
    from stablelab import Monitor
    from stablelab.optim import create

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = create("stable_spam", model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, log_dir=RUN_DIR)
    for _ in range(5):
        x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    print(sorted(m for m in HEAVY if sys.modules.get(m) is not None))  # None: marked missing
    monitor.close()
""")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_studies_extra_lists_every_module_the_cli_checks():
    assert set(STUDIES_EXTRA_MODULES) <= set(HEAVY)
    assert missing_studies_module() is None  # this environment has the extra (make test installs it)


def test_importing_and_running_the_monitor_loads_none_of_the_studies_dependencies(tmp_path):
    code = f"HEAVY = {HEAVY!r}\nRUN_DIR = {str(tmp_path / 'run')!r}\n" + TRAIN
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "[]"  # imported, constructed with log_dir, observed, stepped
    assert (tmp_path / "run" / "done").exists()


def test_the_monitor_writes_and_reads_a_run_folder_without_the_studies_extra(tmp_path):
    run_dir = tmp_path / "run"
    code = (BLOCKER + f"refuse(*{HEAVY!r})\nHEAVY = {HEAVY!r}\nRUN_DIR = {str(run_dir)!r}\n" + TRAIN
            + "from stablelab.store.run_store import load_metrics\n"
              "print([row['step'] for row in load_metrics(RUN_DIR)])\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    modules, steps = result.stdout.splitlines()[:2]
    assert modules == "[]"
    assert steps == "[0, 1, 2, 3, 4]"  # from metrics.jsonl: no Parquet without pyarrow
    assert (run_dir / "done").exists() and (run_dir / "result.json").exists()
    assert not (run_dir / "metrics.parquet").exists()


@pytest.mark.parametrize("missing", ["duckdb", "dask"])
def test_every_command_without_the_studies_extra_says_what_to_install_in_one_line(tmp_path, missing):
    code = BLOCKER + textwrap.dedent(f"""
        refuse({missing!r})
        import contextlib, io, json
        from stablelab.cli import COMMANDS, main

        results = {{}}
        for name in COMMANDS:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main([name, "--out", {str(tmp_path / 'out')!r}])
            results[name] = [code, err.getvalue()]
        print(json.dumps(results))
    """)
    result = _python(code)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert set(results) == set(COMMANDS)
    for name, (code, stderr) in results.items():
        assert code == 2, (name, stderr)
        assert stderr == f"stablelab {name} needs the studies extra: pip install 'stablelab[studies]'\n"
    assert not (tmp_path / "out").exists()  # said before any work


def test_the_command_line_without_the_studies_extra_exits_2_without_a_traceback(tmp_path):
    code = BLOCKER + textwrap.dedent(f"""
        refuse("pyarrow")
        sys.argv = ["stablelab", "proxy", "--out", {str(tmp_path / 'out')!r}]
        from stablelab.cli import main
        raise SystemExit(main())
    """)
    result = _python(code)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "stablelab proxy needs the studies extra: pip install 'stablelab[studies]'"]
    assert result.stdout == ""
