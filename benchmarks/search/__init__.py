"""The accuracy-driven search (`nox -s optimize`): the best recipe of a workload within a budget.

space.py says which recipes a workload may be searched over, optimize.py runs the trials and
writes the Pareto front and the best recipe; `python -m benchmarks.search --help`.
"""
