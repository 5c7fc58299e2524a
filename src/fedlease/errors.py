"""Every error the library raises on purpose, in one place: each is a user's or a file's
problem whose message names the field, file or client and what was expected, so the CLI
prints the message, never a traceback. Nothing here imports the rest of the package: any
module may raise these without an import cycle."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration value is missing, unknown or impossible; the message names the field."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, line or client."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not belong to this run's configuration."""


class OutputError(OSError):
    """The output folder cannot take the run's files; the message names the folder or file."""


class ModelFileError(ValueError):
    """A run or model folder that cannot give the model asked for; the message names it."""


class ProtocolError(ValueError):
    """A server-client message that does not follow the protocol (e.g. a malformed upload
    spec); the message names the field."""


class RejectedUpload(ValueError):
    """A client upload that the server does not aggregate; the message says why."""


class UploadsRejected(ConfigError):
    """Every upload of a round was rejected: nothing to aggregate, the run cannot go on (the
    bound is too tight for this training, or the training diverged)."""

    def __init__(self, rnd: int, rejected: dict[str, str], max_norm: float, kept_in=None):
        first, reason = next(iter(rejected.items()))
        more = f" (and {len(rejected) - 1} more client(s))" if len(rejected) > 1 else ""
        finished = "round 1" if rnd == 2 else f"rounds 1-{rnd - 1}"
        kept = (f"; the metrics and checkpoint of {finished} are kept in {kept_in}"
                if kept_in is not None else "")
        super().__init__(
            f"round {rnd}: the server rejected every client upload, nothing to aggregate: "
            f"client {first!r}: {reason}{more}. Raise federation.max_update_norm (now "
            f"{max_norm:g}; inf: no bound), or lower train.lr if the uploads are not "
            f"finite{kept}")


class PrivacyBudgetExceeded(ValueError):
    """A client asked to train past its privacy budget; the message names the client's
    epsilon spent and what the round would bring it to."""


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
