"""Typed errors raised by iotwasm.

Every failure a user or a guest module can cause has its own type, so callers can react to the
kind (retry, dead-letter, restart the container) and people get one line that names what went
wrong and where: the module, the function and the limit.

Each class also says how the management API answers it, as Starlette's ``HTTPException``
carries its status: `status_code` and `title` are read by the API's error handler (and by
nothing else), so a subclass that needs another answer says so where it is defined instead of
in an ordered ladder of isinstance checks.
"""

from __future__ import annotations


class IotwasmError(Exception):
    """Base of every error iotwasm raises on purpose."""

    #: short machine-readable kind, used in stats, dead letters and logs
    kind = "error"
    #: the management API's answer to it: HTTP status and the problem document's title
    status_code = 422
    title = "Refused"

    def __init__(self, message: str, *, module: str | None = None, function: str | None = None):
        self.module = module
        self.function = function
        where = ""
        if module and function:
            where = f"{module}:{function}: "
        elif module:
            where = f"{module}: "
        super().__init__(where + message)

    @property
    def message(self) -> str:
        return str(self)


class InvalidModule(IotwasmError):
    """The bytes are not a valid WebAssembly module (or not one we can run)."""

    kind = "invalid_module"


class AbiError(IotwasmError):
    """The module breaks the guest ABI contract (missing export, bad framing, wrong version)."""

    kind = "abi"


class CapabilityDenied(IotwasmError):
    """The module asked for something its capabilities do not grant."""

    kind = "capability"


class LimitExceeded(IotwasmError):
    """A resource limit of the container was hit; the guest was stopped, the host lives on."""

    kind = "limit"


class MemoryLimitExceeded(LimitExceeded):
    kind = "memory_limit"


class FuelExhausted(LimitExceeded):
    kind = "fuel_limit"


class TimeoutExceeded(LimitExceeded):
    kind = "timeout"


class StackLimitExceeded(LimitExceeded):
    kind = "stack_limit"


class OutputLimitExceeded(LimitExceeded):
    kind = "output_limit"


class GuestTrap(IotwasmError):
    """The guest trapped (unreachable, out-of-bounds access, division by zero, ...)."""

    kind = "trap"


#: the sandbox stopped the guest — a trap or a resource limit — as opposed to a guest that
#: rejected its input itself: what health gates, crash-loop detection and rollouts count
SANDBOX_FAULTS = (GuestTrap, LimitExceeded)


class GuestError(IotwasmError):
    """The guest reported a failure itself (error record, error code, non-zero exit)."""

    kind = "guest_error"


class InitError(IotwasmError):
    """The guest failed while initialising an instance (trap or non-zero iot_init)."""

    kind = "init"


class IllegalTransition(IotwasmError):
    """A container was asked to move between lifecycle states that are not connected."""

    kind = "lifecycle"


class ContainerUnavailable(IotwasmError):
    """The container cannot take work now (suspended, terminated, or backing off after errors).

    The caller still owns the messages it offered: nothing was consumed.
    """

    kind = "unavailable"


class ModuleNotFound(IotwasmError):
    """A module reference (path, name:version or digest) resolves to nothing."""

    kind = "not_found"
    status_code = 404
    title = "Not found"


class ConfigError(IotwasmError):
    """A limit, capability or option has a value that cannot be used."""

    kind = "config"
    title = "Invalid request"


class SinkRejected(IotwasmError):
    """An uplink refused one message for good: a database constraint or type the row breaks,
    an HTTP 4xx answer about the request itself. Sending it again cannot succeed, so it is
    dead-lettered with this reason and the messages behind it go on; an error that may pass
    (the uplink is away, overloaded, times out) is not this and is retried.

    `payload`, when given, is what the dead letter holds instead of the stored message: what
    the uplink was asked to take, where the sink had turned the message into something else
    (a row, column by column)."""

    kind = "sink_rejected"

    def __init__(self, message: str, *, payload: bytes | None = None):
        super().__init__(message)
        self.payload = payload


class StorageError(IotwasmError):
    """A file of the node's data directory could not be opened, read or written: the disk is
    full, the file system is read-only, a permission is missing, or a database is corrupt.

    It names the file and the operating system's (or SQLite's) reason. Work that meets one is
    held and retried, never acknowledged: a full disk is backpressure, and the node goes on by
    itself once the space is back.
    """

    kind = "storage"
    status_code = 503     # the node's disk, not the request: try again later
    title = "Storage unavailable"

    def __init__(self, what: str, path: object, reason: str):
        #: what the file is to the node ("outbox", "store", "node state", …)
        self.what = what
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{what} {path}: {reason}")
