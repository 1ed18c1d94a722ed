"""Makes helpers.py and gpt_like.py importable as `monitor_test_helpers` and `monitor_gpt_like`
(pytest runs with --import-mode=importlib)."""

import importlib.util
import sys
from pathlib import Path

for _name, _file in (("monitor_test_helpers", "helpers.py"), ("monitor_gpt_like", "gpt_like.py")):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name(_file))
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_name] = _module
        _spec.loader.exec_module(_module)
