"""Run the library's algorithms on Flower: a ServerApp that drives ``Algorithm`` and a ClientApp
that runs the algorithm's client side (``AlgorithmClient.fit`` / ``evaluate``) on the node's
own data.

Needs the optional ``flower`` extra (``pip install fedlease[flower]``); see docs/flower.md.
"""
