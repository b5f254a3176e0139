"""Reading form or JSON fields with one clear refusal per bad field (FormError)."""

from __future__ import annotations

import math

from netforge.errors import ConfigError


class FormError(ConfigError):
    """A field that is missing, of the wrong kind or out of range."""


class Fields:
    """Typed access to a request's fields (a dict of str -> str | list | upload)."""

    def __init__(self, values: dict):
        self.values = values

    def _raw(self, name: str):
        value = self.values.get(name)
        if isinstance(value, str):
            value = value.strip()
        return None if value in (None, "") else value

    def text(self, name: str, default: str | None = None, *, required: bool = False,
             max_length: int = 200) -> str | None:
        value = self._raw(name)
        if value is None:
            if required:
                raise FormError(f'field "{name}" is required')
            return default
        value = str(value)
        if len(value) > max_length:
            raise FormError(f'field "{name}" is longer than {max_length} characters')
        return value

    def integer(self, name: str, default: int | None = None, *, low: int | None = None,
                high: int | None = None, required: bool = False) -> int | None:
        value = self._raw(name)
        if value is None:
            if required:
                raise FormError(f'field "{name}" is required')
            return default
        try:
            number = int(str(value))
        except ValueError:
            raise FormError(f'field "{name}" must be a whole number, got "{value}"') from None
        self._check_range(name, number, low, high)
        return number

    def number(self, name: str, default: float | None = None, *, low: float | None = None,
               high: float | None = None, high_open: bool = False) -> float | None:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(str(value))
        except ValueError:
            raise FormError(f'field "{name}" must be a number, got "{value}"') from None
        if not math.isfinite(number):
            raise FormError(f'field "{name}" must be a finite number, got "{value}"')
        self._check_range(name, number, low, high)
        if high_open and high is not None and number >= high:
            raise FormError(f'field "{name}" must be below {high}, got {number}')
        return number

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "on", "yes"):
            return True
        if text in ("0", "false", "off", "no"):
            return False
        raise FormError(f'field "{name}" must be true or false, got "{value}"')

    def choice(self, name: str, choices, default: str | None = None) -> str:
        value = self._raw(name)
        if value is None:
            if default is None:
                raise FormError(f'field "{name}" is required (one of {", ".join(choices)})')
            return default
        if str(value) not in choices:
            raise FormError(f'field "{name}" must be one of {", ".join(choices)}, got "{value}"')
        return str(value)

    @staticmethod
    def _check_range(name, number, low, high) -> None:
        if low is not None and number < low:
            raise FormError(f'field "{name}" must be at least {low}, got {number}')
        if high is not None and number > high:
            raise FormError(f'field "{name}" must be at most {high}, got {number}')
