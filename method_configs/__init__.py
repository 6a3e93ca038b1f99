"""The ``ns-train`` method configs, one module per method (the ``nerfstudio.method_configs`` entry points).

This folder sits at the repository root, next to the package, and is installed as ``segsplat_ns.method_configs``
(``[tool.setuptools.package-dir]`` in pyproject.toml): import it as ``segsplat_ns.method_configs.<method>``.
"""
