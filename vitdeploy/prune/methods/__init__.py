"""One module per pruning method; each registers itself with ``vitdeploy.prune.registry``."""
