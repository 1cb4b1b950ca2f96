"""The one train loop (`training.loop.train_and_evaluate`) and its small helpers."""
