"""ProviderKey: the API key of a speech or voice provider, given inline or in a file."""

from pydantic import Field, PrivateAttr, SecretStr

from probed.config.files import FileRefused, read_secret
from probed.config.schema.common import ReadableFile
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem


class ProviderKey(StrictModel):
    api_key: SecretStr | None = Field(default=None, description="the provider's API key")
    api_key_file: ReadableFile | None = Field(
        default=None, description="a file holding the API key (e.g. a systemd credential)"
    )

    # Read at load so a missing key fails `probed check`; private state still takes part in ==,
    # so a rotated key counts as a changed probe.
    _file_key: SecretStr | None = PrivateAttr(default=None)

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        if self.api_key is not None and self.api_key_file is not None:
            problems.append((("api_key_file",), "set api_key or api_key_file, not both"))
        elif self.api_key_file is not None:
            try:
                self._file_key = SecretStr(read_secret(self.api_key_file).decode("utf-8").strip())
            except (OSError, UnicodeDecodeError, FileRefused) as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or "not UTF-8 text"
                problems.append((("api_key_file",), f"cannot read the key: {reason}"))
        return problems

    @property
    def key(self) -> str | None:
        secret = self.api_key or self._file_key
        return None if secret is None else secret.get_secret_value()
