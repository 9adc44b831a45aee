__version__ = "0.1.0"

from .loss import MDFLoss

__all__ = ['MDFLoss', '__version__']
