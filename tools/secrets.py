"""Secret values for tool sources, read only when a call needs them, and never written anywhere.

A source config names where a secret comes from (`SecretRef`: an environment variable, or a key
of the secrets file that `OPSAGENT_SECRETS` points at, a YAML or JSON mapping name -> value),
never the value. `Secrets` resolves references in the process that makes the call (an executor
actor), so no value travels with the registry to other actors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from opsagent.errors import SecretError

SECRETS_FILE_ENV = "OPSAGENT_SECRETS"
MIN_SECRET_LENGTH = 8  # shorter values cannot be redacted without mangling ordinary text


class SecretRef(BaseModel):
    """Where one secret value comes from: exactly one of `env` and `secret`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, description="Name of the environment variable holding the value.")
    secret: str | None = Field(None, description=f"Key of the value in the secrets file (${SECRETS_FILE_ENV}).")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.env is None) == (self.secret is None):
            raise ValueError("give exactly one of env (an environment variable) or secret (a secrets-file key)")
        return self

    def __str__(self) -> str:
        return f"environment variable {self.env}" if self.env else f"secrets-file key {self.secret!r}"


class Secrets:
    """Resolves `SecretRef`s from the environment and the secrets file (re-read when it changes)."""

    def __init__(self, environ: Mapping[str, str] | None = None, file: Path | str | None = None) -> None:
        """`environ`: default os.environ (read at each lookup); `file`: default $OPSAGENT_SECRETS."""
        self._environ = environ
        self._file = Path(file) if file is not None else None
        self._cache: tuple[Path, float, dict[str, str]] | None = None

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    @property
    def file(self) -> Path | None:
        if self._file is not None:
            return self._file
        named = self.environ.get(SECRETS_FILE_ENV)
        return Path(named) if named else None

    def get(self, ref: SecretRef) -> str:
        """The value; SecretError naming the reference (never a value) if it cannot be had."""
        if ref.env is not None:
            value = self.environ.get(ref.env)
        else:
            file = self.file
            if file is None:
                raise SecretError(f"{ref} is needed but ${SECRETS_FILE_ENV} names no secrets file")
            value = self.file_values().get(ref.secret or "")
        if not value:
            raise SecretError(f"{ref} is not set")
        if len(value) < MIN_SECRET_LENGTH:
            raise SecretError(f"{ref} is shorter than {MIN_SECRET_LENGTH} characters: too short to redact "
                              "reliably from traces")
        return value

    def file_values(self) -> dict[str, str]:
        """Every name -> value of the secrets file ({} without one); SecretError if unreadable."""
        file = self.file
        if file is None:
            return {}
        try:
            mtime = file.stat().st_mtime
            if self._cache is not None and self._cache[:2] == (file, mtime):
                return self._cache[2]
            data = yaml.safe_load(file.read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as err:
            raise SecretError(f"cannot read the secrets file {file}: {type(err).__name__}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
            raise SecretError(f"the secrets file {file} must be a mapping of name -> string value")
        values = {str(k): str(v) for k, v in data.items()}
        self._cache = (file, mtime, values)
        return values

    def known_values(self, refs: Iterable[SecretRef]) -> set[str]:
        """Every value that must never leave the executor: the referenced ones that are set and
        every value of the secrets file long enough to be one (`get` refuses shorter ones, so they
        are never sent). Never raises (an unreadable file is reported by `get`)."""
        values: set[str] = set()
        for ref in refs:
            try:
                values.add(self.get(ref))
            except SecretError:
                pass
        try:
            values.update(self.file_values().values())
        except SecretError:
            pass
        return {v for v in values if len(v) >= MIN_SECRET_LENGTH}

