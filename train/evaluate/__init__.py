"""`uti eval`'s library: held-out loss per task, conditional dependence by prompt ablation, bootstrap
intervals (train.evaluate.losses, .ablation, .stats); generation health lives in .generation."""
