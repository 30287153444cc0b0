"""losslandscape: loss landscapes of neural networks as an HPC batch tool.

After Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018.
"""

from losslandscape._version import __version__

_API = ("compute_surface", "interpolate", "compute_trajectory", "compute_hessian", "open_surface", "plot")


def __getattr__(name: str):
    # the Python interface loads torch; `import losslandscape` alone (the renderer) must not
    if name in _API:
        from losslandscape.frontends import api

        return getattr(api, name)
    if name == "UserError":
        from losslandscape.errors import UserError

        return UserError
    raise AttributeError(f"module 'losslandscape' has no attribute {name!r}")


__all__ = [*_API, "UserError", "__version__"]
