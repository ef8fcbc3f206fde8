"""Secrets never sit in the YAML: they come from a ``*_file`` key, an environment variable or a
systemd credential (``$CREDENTIALS_DIRECTORY``), and live in the models only as ``SecretStr``."""

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr, ValidationInfo
from pydantic_core import PydanticCustomError

from agent.config.base import Loading, Loc, config_path, loading_of, reason


def _secret_file(v: Path, info: ValidationInfo) -> Path:
    loading = loading_of(info)
    if loading is not None:
        loading.secrets[v] = read_secret(v)
    return v


def read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise reason(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise reason(f"secret file {path} is not UTF-8 text") from None
    if not secret:
        raise reason(f"secret file {path} is empty")
    return secret


SecretFile = Annotated[Path, AfterValidator(config_path), AfterValidator(_secret_file)]


def inline_secret(info: ValidationInfo, env_var: str, credential: str) -> PydanticCustomError:
    key = info.field_name or "password"
    return reason(
        f"inline secrets are not allowed: put the {key} in a file only the driftgate user can "
        f"read and set {key}_file: /etc/driftgate/{credential.replace('_', '-')}, or set the "
        f"environment variable {env_var}, or use systemd "
        f"LoadCredential={credential}:/etc/driftgate/{credential.replace('_', '-')}"
    )


def find_secret(
    loading: Loading,
    secret_file: Path | None,
    env_var: str,
    credential: str,
    problems: list[tuple[Loc, str]],
) -> SecretStr | None:
    """The secret from its file key, else the environment variable, else the systemd credential."""
    if secret_file is not None:
        return SecretStr(loading.secrets[secret_file]) if secret_file in loading.secrets else None
    if env_var in loading.env:
        if not loading.env[env_var]:
            problems.append(((), f"environment variable {env_var} is set but empty"))
            return None
        return SecretStr(loading.env[env_var])
    credentials_dir = loading.env.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        path = Path(credentials_dir) / credential
        if path.exists():
            try:
                return SecretStr(read_secret(path))
            except PydanticCustomError as exc:
                problems.append(((), exc.message()))
    return None
