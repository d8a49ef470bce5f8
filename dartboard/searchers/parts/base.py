"""Defaults every part shares: nothing to check, no state, no metrics."""

from __future__ import annotations

from typing import Any


class Part:
    def check(self, config: Any, layout: Any) -> None:
        """Refuse, before the search starts, a composition this part cannot run in (name the conflict)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (nothing by default)."""

    def metrics(self, ctx: Any) -> dict[str, float]:
        return {}
