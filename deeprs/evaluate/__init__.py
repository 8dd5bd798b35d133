"""Evaluation of a trained method on a split: Dice, HD95 and folding (``deeprs evaluate``)."""
