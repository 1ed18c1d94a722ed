"""The studies' small MLP: defined once in `stablelab.nn.mlp` (continual/ uses it too); these names
stay importable from here."""

from stablelab.nn.mlp import ACTIVATIONS, MLP

__all__ = ["ACTIVATIONS", "MLP"]
