"""One exception type for every input problem a user can fix: printed as one line, exit code 2."""


class FaceIgniteError(RuntimeError):
    """A problem with the user's input (a path, a file, an option), with a message they can act on."""
