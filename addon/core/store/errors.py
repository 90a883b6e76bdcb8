"""The store's expected failures: each message says what to do, and callers show it as one line."""


class StoreError(RuntimeError):
    """Storage cannot be used as configured right now; ``str()`` is the whole explanation."""


class StoreBusy(StoreError):
    """The file stayed locked by another process (or its owner's other work) longer than we were willing to wait."""


class OwnerAway(StoreBusy):
    """A file this process reaches only through its owner, whose socket does not answer now."""
