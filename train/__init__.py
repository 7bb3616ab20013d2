"""Token LM training on tokenized shards (Ray Train) and constrained generation.

Public API (import from the submodules; this package imports nothing so `uti` starts fast):

    train.config.TrainConfig, parse_mix          every `uti train` knob (strict, keyword-only)
    train.runner.train(cfg) -> TrainResult        the driver: checks, Ray TorchTrainer, plot
    train.runner.prepare_run(cfg)                 the pre-flight checks alone (no Ray)
    train.generate.generate(GenerateConfig)       `uti generate`: constrained sampling + decode
    train.sequences                               task sequences, loss masks, packing (pure)
    train.stream.BatchStream                      per-worker streaming input pipeline (resumable)
    train.model.build_model, PackedLM             tiny / local HF model sized to the token space
    train.checkpoint                              checkpoint layout, latest_checkpoint, load_tensors
    train.metrics                                 metrics.jsonl and loss.png
"""
