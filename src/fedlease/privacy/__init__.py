"""Example-level differential privacy of each client's training data (docs/security.md).

``client.py``: a client's DP setup (``client_privacy``); ``accounting.py``: its mechanism and
epsilon (Opacus' accountants); ``dpsgd.py``: DP-SGD as the local update; ``grad_sampler.py``:
per-example gradients of the mixture layer; ``embedding.py``: the DP allocation vector;
``report.py``: the run's guarantee (``run.json``, summary) and the budget stop.
"""
