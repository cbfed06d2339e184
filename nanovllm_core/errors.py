"""Errors the engine raises for requests it cannot serve (each a ValueError)."""


class InvalidRequestError(ValueError):
    """A request that can never run as asked; ``param`` names the culprit."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthError(InvalidRequestError):
    def __init__(self, message: str, param: str = "max_tokens"):
        super().__init__(message, param=param, code="context_length_exceeded")
