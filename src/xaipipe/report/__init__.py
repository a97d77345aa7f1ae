"""Tables and figures of an experiment, each registered by name.

``TABLES.get("summary")(summary, {"csv": ..., "md": ..., "tex": ..., "html": ...})`` and
``FIGURES.get("auc_bars")(FigureInputs(...), [png, pdf])``; see :mod:`.tables`,
:mod:`.figures` and :mod:`.inputs` (the summary's columns).
"""
from .figures import (FIGURES, auc_bars_figure, bar_panels, display_map,
                      saliency_grid, saliency_grid_figure)
from .inputs import SUMMARY_COLUMNS, FigureInputs, check_summary, read_summary
from .tables import TABLES, to_html, to_latex, to_markdown

__all__ = ["FIGURES", "SUMMARY_COLUMNS", "TABLES", "FigureInputs",
           "auc_bars_figure", "bar_panels", "check_summary", "display_map", "read_summary",
           "saliency_grid", "saliency_grid_figure", "to_html", "to_latex", "to_markdown"]
