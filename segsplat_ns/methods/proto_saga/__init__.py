"""Proto-SaGa (prototype-based segmentation with semantic-aware Gaussian grouping) — work in progress.

- :mod:`.association`: the memory-bank association of Sec. 3.2 (Eq. 9-16), pure torch.

The method itself (joint training with per-view classifiers, prototypes, ``ns-train proto-saga``) is not built
yet; nothing is registered.
"""
