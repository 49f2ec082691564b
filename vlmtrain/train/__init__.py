"""Model loading, freezing/adapters, the SFTTrainer wiring, and the ``fit`` orchestration."""
