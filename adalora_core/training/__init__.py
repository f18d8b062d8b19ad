"""The training loop's parts; ``adalora_core.trainer.train`` sets a run up and joins them.

``events`` (what a caller hears, how it stops a run), ``adaptation`` (the adapted model the
loop drives), ``optimizer`` (AdamW and the learning-rate schedule), ``update`` (one optimizer
update over its micro-batches, across processes too), ``loop`` (epochs, and when to report,
evaluate and checkpoint), ``evaluation`` (scoring the validation rows) and ``state`` (what a
checkpoint captures, its save and resume).
"""
