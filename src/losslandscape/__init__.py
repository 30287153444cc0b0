"""losslandscape: loss landscapes of neural networks as an HPC batch tool.

After Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018.
"""

__version__ = "0.1.0"
