"""`uti eval`'s library: a trained token LM measured against a tokenized dataset (held-out loss per task,
conditional dependence by prompt ablation, generation health, memorization, text regression, mix collapse)."""
