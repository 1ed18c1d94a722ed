"""Crash-safe file writes: the implementation lives in `stablelab.io` (layer 0, shared with report/);
these names stay importable from here."""

from stablelab.io import atomic_write_bytes, atomic_write_json, read_json, to_jsonable

__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "to_jsonable"]
