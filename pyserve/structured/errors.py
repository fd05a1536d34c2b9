"""The error raised for a bad or unsupported constraint, naming the offending field."""

from __future__ import annotations


class StructuredOutputError(ValueError):
    """A constraint that cannot be honoured; ``param`` names the field (dotted path)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.reason = message


def require_xgrammar():
    """The xgrammar module, or a ValueError saying how to install it."""
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - xgrammar is in the serve and dev extras
        raise ValueError("structured outputs need xgrammar: pip install 'pyserve[serve]'") from exc
    return xgrammar


def first_line(exc: BaseException) -> str:
    """xgrammar's message without its ``[time] file:line:`` prefix."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(": ", 1)[1] if line.startswith("[") and ": " in line else line
