"""Pruning methods. Import the submodules; this package stays light (no torch at import).

- ``token_methods`` (settings in ``token_config``): static token plans from calibration data:
  ``patch_slimming``, ``star`` (and a-STAR), and the uniform / class-attention / random baselines;
- ``structural`` (settings in ``nvit_config``): NViT global structural pruning, with the
  criteria in ``importance``; ``sparsity``: 2:4 masks and their verifier;
- ``spvit`` (settings in ``spvit_config``): SPViT's learned token selectors;
- ``calibrate``: the calibration passes the token methods share.
"""
