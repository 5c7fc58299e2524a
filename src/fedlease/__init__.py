"""fedlease: federated fine-tuning of language models with adaptive LoRA experts.

The public Python API (docs/extending.md)::

    import fedlease
    config = fedlease.load_config("my.toml", {"federation": {"rounds": 5}})
    result = fedlease.run(config)            # the run's RunResult; files in config.output.dir
    model = fedlease.load_client_model("runs/latest", "sentiment-0")

and the plugin registrations ``register_algorithm``, ``register_task``, ``register_source``,
``register_aggregation`` (``fedlease.plugins``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_client_model", "load_config", "register_aggregation", "register_algorithm",
           "register_source", "register_task", "run"]

# name -> the module that defines it; imported on first use, so `import fedlease` (and the CLI's
# start) stays free of torch
_LAZY = {"load_client_model": "fedlease.inference", "load_config": "fedlease.configure",
         "register_algorithm": "fedlease.plugins", "register_task": "fedlease.plugins",
         "register_source": "fedlease.plugins", "register_aggregation": "fedlease.plugins"}


def run(config, out_dir=None, *, progress: bool = True, resume: bool = False,
        overwrite: bool = False):
    """One federated run, as ``fedlease run`` does it: ``config`` is a ``RunConfig``
    (``load_config``) or the path of a TOML file; the outputs go to ``out_dir`` (default
    ``config.output.dir``). Returns the ``RunResult`` (per-round history, the algorithm's
    report, e.g. the clustering)."""
    from fedlease.config import RunConfig
    from fedlease.configure import load_config
    from fedlease.transports.simulator import run_simulation

    if not isinstance(config, RunConfig):
        config = load_config(config)
    return run_simulation(config, config.output.dir if out_dir is None else out_dir,
                          progress=progress, resume=resume, overwrite=overwrite)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedlease' has no attribute {name!r}")
