"""Fine-tuning the speech path (`speechlora finetune CONFIG.yaml`).

config.py (the yaml schema), data.py (manifests -> bucketed micro-batches), trainer.py (the loop on
accelerate: DDP/FSDP/DeepSpeed, checkpoints, exact resume, validation), export.py (PEFT adapter or
full native model folder), cli.py (the subcommand).
"""
