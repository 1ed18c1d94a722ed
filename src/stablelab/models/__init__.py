from stablelab.models.transformer import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig"]
