"""Figures and tables of the results."""
from .figures import auc_bars, saliency_grid

__all__ = ["auc_bars", "saliency_grid"]
