"""Training: one small task per model family, one generic loop, and checkpoints."""
