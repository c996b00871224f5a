"""Model level: profile a whole PyTorch model, turn its hot operators into problems at the
model's real shapes, optimize them as a batch, and measure the model end to end with the
library (`forge profile-model`, `forge optimize-model`; docs/model.md)."""
