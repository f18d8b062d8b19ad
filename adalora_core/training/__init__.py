"""The training loop's parts; ``adalora_core.trainer.train`` puts them together."""
