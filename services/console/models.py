"""Model versions for the page: the registry, what model.versions says is
serving, and live accuracy from the feedback service; plus promote and rollback.

Promote and rollback go through the one promotion
(:func:`sentiflow.models.publish.promote`), as ``sentiflow models promote/rollback``
do: check the version's files against its manifest, set the stage in the registry,
publish the version on model.versions. The registry (and with it transformers) is imported on
first use, so a console that never opens the models tab starts light.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sentiflow.config import KafkaSettings, RegistrySettings, TopicNames
from services.console.corrections import ConsoleError
from services.console.state import ConsoleState

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from sentiflow.models.registry import ModelRegistry, VersionInfo


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: round(float(v), 4)
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def registry_json(info: VersionInfo) -> dict[str, Any]:
    return {
        "model": info.model_name,
        "version": info.version,
        "parent": info.parent or "",
        "stage": info.stage,
        "created": info.created,
        "metrics": _numeric(info.metrics),
        "labels": list(info.labels),
        "reason": info.reason,
    }


class Models:
    def __init__(
        self,
        registry: RegistrySettings,
        kafka: KafkaSettings,
        topics: TopicNames,
        state: ConsoleState,
    ) -> None:
        self._registry_settings = registry
        self._kafka = kafka
        self._topics = topics
        self._state = state
        self._lock = threading.Lock()  # one stage change at a time from this console

    def _registry(self) -> ModelRegistry:
        from sentiflow.models.location import open_registry

        return open_registry(self._registry_settings)

    def list(self) -> list[dict[str, Any]]:
        """Every version known to the registry or the topic, newest first per model.

        ``serving`` is what model.versions says (what inference runs now); ``stage``
        is the registry's, else the topic's.
        """
        with self._state.lock:
            from_topic = {(v["model"], v["version"]): v for v in self._state.models.versions()}
            roles = {m: self._state.models.roles(m) for m in self._state.models.states}
        rows: dict[tuple[str, str], dict[str, Any]] = dict(from_topic)
        registry = self._registry()
        try:
            known = registry.models()
        except (OSError, ValueError) as exc:
            log.warning("registry unreadable: %s", exc)
            known = []
        for model in known:
            for info in registry.list(model):
                row = registry_json(info)
                topic_row = from_topic.get((model, info.version))
                if topic_row is not None:
                    row["published_at"] = topic_row["published_at"]
                rows[(model, info.version)] = row
        out = []
        for (model, version), row in sorted(rows.items(), reverse=True):
            row["serving"] = roles.get(model, {}).get(version, "")
            out.append(row)
        return out

    def promote(self, model: str, version: str, reason: str) -> dict[str, Any]:
        from sentiflow.models.publish import Publisher, promote
        from sentiflow.models.registry import RegistryError, UnknownVersionError

        with self._lock:
            try:
                info = promote(
                    self._registry(),
                    Publisher(self._kafka, self._topics, self._registry_settings.signing_key),
                    model,
                    version,
                    reason,
                )
            except UnknownVersionError as exc:
                raise ConsoleError(404, str(exc)) from exc
            except (RegistryError, OSError) as exc:
                raise ConsoleError(400, f"cannot promote {model} {version}: {exc}") from exc
        return registry_json(info)

    def rollback(self, model: str, version: str | None, reason: str) -> dict[str, Any]:
        from sentiflow.models.registry import previous_production

        if version is None:
            registry = self._registry()
            try:
                current = registry.production(model)
                version = previous_production(
                    registry.list(model), current.version if current else None
                )
            except (ValueError, OSError) as exc:
                raise ConsoleError(400, f"cannot roll back {model}: {exc}") from exc
            if version is None:
                raise ConsoleError(409, f"{model}: no earlier production version to roll back to")
        return self.promote(model, version, reason)
