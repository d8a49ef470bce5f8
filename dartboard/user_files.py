"""Mappings the user gives as YAML or JSON text (run configs, studies, motor files): parsed in one way, with one
kind of error. torch-free, like :mod:`dartboard.errors`."""

from __future__ import annotations

import functools
import json
import re
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
        data = json.loads(text) if json_syntax else load_yaml_text(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{where} is not valid {'JSON' if json_syntax else 'YAML'}: {' '.join(str(err).split())}") \
            from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{where}: expected {what}")
    return data


#: A number in exponent form without a decimal point (1e-4, 5E3, -2e+1): a float in YAML 1.2 and JSON, a string to
#: PyYAML's YAML 1.1 resolver, which asks for a dot (1.0e-4).
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def load_yaml_text(text: str) -> Any:
    """YAML text as the user wrote it (PyYAML's safe loader), with ``1e-4`` read as the number it is: a learning rate
    written so reached the searcher as the string '1e-4' and was refused as no number."""
    import yaml

    return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass: no Python objects


@functools.cache
def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):  # its own copy of the resolvers: PyYAML's SafeLoader is left as it is
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
    return Loader
