"""Training: data, tokenizers, schedule, loss and the train/evaluate entry points."""
