"""Pruning methods. Import the submodules; this package stays light (no torch at import).

- ``methods``: one folder per method (its registration, settings and algorithm); ``token_methods``
  drives the static token plans (ToMe, Patch Slimming, STAR and a-STAR, and the uniform /
  class-attention / random baselines), whose shared target settings are in ``token_config``;
- ``structural`` (settings in ``nvit_config``): NViT global structural pruning, with the
  criteria in ``importance``; ``sparsity``: 2:4 masks and their verifier;
- ``spvit`` (settings in ``spvit_config``): SPViT's learned token selectors;
- ``calibrate``: the calibration passes the token methods share.
"""
