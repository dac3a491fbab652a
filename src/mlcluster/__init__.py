"""mlcluster: bake images, configure clusters and prove distributed training works."""

__version__ = "0.1.0"
