"""The one error type of LoRA loading, so callers can catch every "this LoRA does not fit" at once."""


class LoraError(ValueError):
    """A LoRA that cannot be read or does not fit the model. Raised before any weight changes; the
    message names the file, key, module or adapter at fault."""
