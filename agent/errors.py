"""The one exception tree: everything driftgate raises on purpose is a DriftgateError."""


class DriftgateError(Exception):
    """Base class of every error driftgate raises for a user to act on."""


class ConfigError(DriftgateError):
    """The configuration is invalid; `problems` holds one line per problem (file: key: reason)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SpoolError(DriftgateError):
    """The local spool (SQLite under state_dir) cannot be opened or written."""


class ForwardError(DriftgateError):
    """InfluxDB refused or could not take a batch; carries what to do next."""


class DecodeError(DriftgateError):
    """A frame could not be decoded (bad checksum, wrong shape, not a number, unknown topic)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DiskFullError(SpoolError):
    """The disk under the state dir is full (SQLITE_FULL, ENOSPC): free space there."""
