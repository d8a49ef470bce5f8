"""Mappings the user gives as YAML or JSON text (run configs, studies, motor files): parsed in one way, with one
kind of error. torch-free, like :mod:`dartboard.errors`."""

from __future__ import annotations

import json
from typing import Any

from dartboard.errors import UserInputError


def parse_mapping(text: str, where: str, *, what: str = "a mapping at the top level", json_syntax: bool = False,
                  empty_ok: bool = True, error: type[UserInputError] = UserInputError) -> dict[str, Any]:
    """The mapping ``text`` holds. ``where`` names the file in every error (``config file 'run.yaml'``); ``what``
    says what was expected instead of another value; ``json_syntax``: parsed by JSON's own parser (JSON is YAML
    too, but JSON's parser names the place of a JSON file's error); ``empty_ok``: an empty file is ``{}`` (else it
    is no mapping); ``error``: the :class:`UserInputError` raised (a data loader's ``DataError``, say)."""
    import yaml

    try:
        data = json.loads(text) if json_syntax else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{where} is not valid {'JSON' if json_syntax else 'YAML'}: {' '.join(str(err).split())}") \
            from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{where}: expected {what}")
    return data
