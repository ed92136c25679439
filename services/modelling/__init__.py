"""Building models, apart from serving them: synthetic data, training, evaluation.

Its heavy dependencies (tqdm, captum) are the ``build`` extra of the package; the engine
that workers serve (``services/diagnosis``) needs none of it.
"""


def reproducible(seed: int, threads: int) -> None:
    """Seeded, single-process deterministic kernels on a fixed number of threads: what makes
    every build here a function of its seed."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
