"""The one base class of bad-input errors.

Every error that says "this input is wrong" (a settings file, a raster, a partition key, a query, a
landing location) derives from ``InputError``: the CLI prints it as one line and exits 2, and assets
fail at once without retrying. Messages name the input and the problem."""


class InputError(ValueError):
    """An input (file, setting, key, query) cannot be used; the message names it and says why."""
