"""vitdeploy: prune, export, build and benchmark Vision Transformers."""

from vitdeploy.errors import VitDeployError

__version__ = "0.1.0"
__all__ = ["VitDeployError", "__version__"]
