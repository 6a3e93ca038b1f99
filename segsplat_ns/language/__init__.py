"""Language features (LangSplat / GAGS supervision): per-mask CLIP embeddings at three granularity levels.

``features``: pure functions (levels, crops, the ``_s.npy`` / ``_f.npy`` record); ``encoders``: the CLIP
encoder; ``cache``: the on-disk cache; ``sources``: ``LanguageSourceConfig`` and the ``folder`` source.
Nothing heavy is imported here.
"""
