"""Visual output: HTML reports (circuitsvis attention views and image heatmaps to come)."""

from .report import Report as Report
