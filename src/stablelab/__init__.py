"""stablelab: find, predict and fix neural-network training instabilities.

Data flows one way: config -> run -> store -> analysis -> report (see docs/design.md).
"""

__version__ = "0.1.0"
