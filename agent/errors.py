"""The one family of user-facing errors: each says what went wrong and what to do."""


class ObsconformError(Exception):
    """A harness or usage error: printed as one line on stderr, exit code 1."""

    exit_code = 1


class ProbeError(ObsconformError):
    """eBPF probes could not be compiled, loaded or attached on this host."""


class TargetError(ObsconformError):
    """The service under test could not be found, started, or reached."""


class InputError(ObsconformError):
    """A file or argument the user gave is malformed (scenario, catalogue, run spec)."""
