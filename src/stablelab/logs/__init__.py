"""Training logs people already have, read into stablelab's signals: TensorBoard event files (with
the `tensorboard` package's reader), CSV (Lightning's CSVLogger, W&B exports), a Hugging Face
Trainer `trainer_state.json`, an MLflow file-store run (with MLflow's own store) and JSONL.

    runs = find_runs(path, format=None)      # one LogSource per run found under path
    log = read_log(source, mapping)          # a LoggedRun: per signal, its steps and values

Values are kept as numpy arrays (a 1,000,000-step log is tens of MB, not a million dicts)."""

from stablelab.logs.aliases import ALIASES, SIGNALS, map_columns, parse_mapping
from stablelab.logs.formats import FORMATS, LogSource, LoggedRun, find_runs, read_log

__all__ = ["ALIASES", "SIGNALS", "FORMATS", "LogSource", "LoggedRun", "find_runs", "read_log", "map_columns",
           "parse_mapping"]
