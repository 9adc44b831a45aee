__version__ = "0.2.0"

from .loss import MDFLoss

__all__ = ['MDFLoss', '__version__']
