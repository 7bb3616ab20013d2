"""`uti eval`'s library: a trained run scored against a tokenized dataset.

Held-out loss per task (.losses), conditional dependence by prompt ablation (.ablation), generation
health (.generation) and memorization (.memorization), text-only regression against the base model
(.regression), mix collapse over the run (.collapse), baseline gating (.baseline), bootstrap intervals
(.stats); .run puts them together on Ray workers and .report writes report.json and report.html.
"""
