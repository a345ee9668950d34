"""Fine-tuning: recipe, schedule, the frozen and partial-unfreeze phases, per-epoch session, torchrun."""
