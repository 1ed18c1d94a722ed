"""Makes helpers.py importable as `optim_test_helpers` (pytest runs with --import-mode=importlib)."""

import importlib.util
import sys
from pathlib import Path

if "optim_test_helpers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("optim_test_helpers", Path(__file__).with_name("helpers.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["optim_test_helpers"] = _module
    _spec.loader.exec_module(_module)
