"""stablelab: find, predict and fix neural-network training instabilities.

Data flows one way: config -> run -> store -> analysis -> report (see docs/design.md).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from stablelab import Monitor` (issue 3's interface), imported lazily: `import stablelab` stays light.
    if name == "Monitor":
        from stablelab.monitor import Monitor

        return Monitor
    if name == "diagnose":  # stablelab.diagnose(path) -> Diagnosis (issue 22)
        from stablelab.diagnosis import diagnose

        return diagnose
    raise AttributeError(f"module 'stablelab' has no attribute {name!r}")
