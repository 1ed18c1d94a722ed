"""Detection-quality benchmark for the training-instability monitor: labelled scenarios and anchors."""
