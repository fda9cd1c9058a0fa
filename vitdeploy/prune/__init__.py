"""Pruning methods. Import the submodules; this package stays light (no torch at import).

- ``methods``: one folder per method, holding its registration, settings, algorithm and summary:
  ``nvit`` (NViT global structural pruning), ``spvit`` (learned token selectors), ``tome``,
  ``star`` (and a-STAR), ``patch_slimming`` and the ``baselines``; ``sparse24`` is one module
  over ``sparsity`` (2:4 masks and their verifier, which the models read too);
- ``token_methods`` drives the static token plans, whose shared FLOPs and latency targets are in
  ``token_config``; ``calibrate`` holds the calibration passes they share;
- ``registry``, ``costs`` and ``summaries``: what every method is registered, priced and printed with.
"""
