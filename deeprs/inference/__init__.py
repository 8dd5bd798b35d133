"""Applying trained models: the one place where networks turn images into predictions.

``model`` reads the networks of a ``model.pt`` or of a bundle; ``bundle`` writes and reads
the self-contained model bundle (networks + preprocessing plan + label table + versions);
``networks`` runs the forward passes on the training grid (padding and autocast included)
for evaluation, the overlay figures, ``predict`` and ``register`` alike; ``space`` carries
a new image onto the training grid and predictions back onto the image's own grid.
``predict``, ``register`` and ``export`` are the ``deeprs`` subcommands built on them.
Nothing here imports training code.
"""
