"""The report floor: every figure (plots.py) and report.html (page.py), from files in a run
folder; training and evaluate both call it."""
