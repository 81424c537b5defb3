"""Studies: many pruning recipes compared in one request (torch-free: expansion, Pareto fronts, the view)."""
