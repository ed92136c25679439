"""Building models, apart from serving them: synthetic data, training, evaluation.

Its heavy dependencies (tqdm, captum) are the ``build`` extra of the package; the engine
that workers serve (``services/diagnosis``) needs none of it.
"""
