"""deploy/: every service reaches Kafka as its own Strimzi KafkaUser, and the users'
ACLs allow what each service reads and writes, per its own settings, and no more.

The topics and consumer groups a service uses are read from the settings its
Deployment's environment gives it (TopicNames, group prefix, group names), so a
renamed topic or group fails here rather than as an authorization error in a pod.
ACLs are evaluated as Kafka's simple authorizer does: literal names (``*`` for any),
prefixes, ``All``, and Describe implied by Read, Write, Delete and Alter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from sentiflow.config import Settings, TopicNames
from sentiflow.topics import topic_specs
from services.alerting.app import changelog_specs
from services.alerting.config import AlertingSettings
from tests.deploy.test_kustomize import OVERLAYS, config_env, container, kinds, render
from tests.support.deploy import load_settings, settings_classes

Doc = dict[str, Any]

# Readers that follow a topic without a group still name one: follower-<uuid>
# (sentiflow/follow.py), never committed.
FOLLOWER_GROUP = "follower-"
OPERATIONS = {"Read", "Write", "Describe"}  # all a service needs
IMPLIES_DESCRIBE = {"Read", "Write", "Delete", "Alter"}


@dataclass(frozen=True)
class Flow:
    """What a service does with Kafka: logical topic names (TopicNames fields)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    follows: bool = False  # reads some of ``reads`` with a follower (no group)


FLOWS = {
    "ingest": Flow(writes=("docs_raw", "docs_dlq")),
    "inference": Flow(
        reads=("docs_raw", "model_versions"), writes=("docs_scored", "docs_dlq"), follows=True
    ),
    "feedback": Flow(reads=("docs_scored",), writes=("feedback_events", "docs_dlq")),
    "feedback-aggregator": Flow(
        reads=("feedback_events",), writes=("training_examples", "docs_dlq")
    ),
    "trainer": Flow(
        reads=("training_examples", "docs_scored"), writes=("model_versions",), follows=True
    ),
    "alerting": Flow(reads=("docs_scored",), writes=("alerts_sentiment", "docs_dlq")),
    "console": Flow(reads=("docs_scored", "alerts_sentiment", "model_versions"), follows=True),
}


def groups_of(name: str, settings: Settings) -> set[str]:
    """The consumer groups a service commits offsets in, from its own settings."""
    options: Any = {
        "inference": getattr(settings, "inference", None),
        "feedback": getattr(settings, "feedback", None),
        "feedback-aggregator": getattr(settings, "feedback", None),
        "alerting": getattr(settings, "alerting", None),
    }.get(name)
    if name == "feedback":
        return {settings.group_id(options.store_group)}
    if options is not None:
        return {settings.group_id(options.group)}
    return set()


def state_topics(name: str, settings: Settings) -> set[str]:
    """Topics a service both writes and reads back (Faust changelogs)."""
    if name == "alerting":
        assert isinstance(settings, AlertingSettings)
        return {spec.name for spec in changelog_specs(settings)}
    return set()


@dataclass(frozen=True)
class Rule:
    type: str
    name: str
    pattern: str
    operations: frozenset[str]
    host: str

    @classmethod
    def of(cls, acl: Doc) -> Rule:
        resource = acl["resource"]
        ops = acl.get("operations") or [acl["operation"]]
        return cls(
            resource["type"],
            resource.get("name", ""),
            resource.get("patternType", "literal"),
            frozenset(ops),
            acl.get("host", "*"),
        )

    @property
    def wildcard(self) -> bool:
        return self.pattern == "prefix" or self.name == "*"

    def matches(self, kind: str, name: str) -> bool:
        if kind != self.type:
            return False
        if self.pattern == "prefix":
            return name.startswith(self.name)
        return self.name in ("*", name)

    def allows(self, kind: str, name: str, operation: str) -> bool:
        if not self.matches(kind, name) or self.host != "*":
            return False
        ops = self.operations
        if "All" in ops or operation in ops:
            return True
        return operation == "Describe" and bool(ops & IMPLIES_DESCRIBE)


@dataclass(frozen=True)
class User:
    name: str
    rules: tuple[Rule, ...]

    def allows(self, kind: str, name: str, operation: str) -> bool:
        return any(rule.allows(kind, name, operation) for rule in self.rules)


def users(docs: list[Doc]) -> dict[str, User]:
    out = {}
    for name, doc in kinds(docs, "KafkaUser").items():
        authz = doc["spec"]["authorization"]
        assert authz["type"] == "simple", name
        out[name] = User(name, tuple(Rule.of(acl) for acl in authz["acls"]))
    return out


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def kafka_user_of(c: Doc) -> str:
    """The KafkaUser a container connects as, checked to read that user's own password."""
    env = env_of(c)
    user = env["SENTIFLOW_KAFKA__SASL_USERNAME"]["value"]
    ref = env["SENTIFLOW_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": user, "key": "password", "optional": False}, c["name"]
    return str(user)


@dataclass(frozen=True)
class Service:
    name: str
    user: str
    settings: Settings
    names: TopicNames


def services(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> list[Service]:
    """Each Deployment with the user it connects as and the settings it reads."""
    env = config_env(docs)
    classes = settings_classes()
    out = []
    for name, deployment in kinds(docs, "Deployment").items():
        main = container(deployment)
        own = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
        settings = load_settings(classes[name], {**env, **own}, monkeypatch)
        out.append(Service(name, kafka_user_of(main), settings, settings.topics))
    return out


def full(names: TopicNames, logical: Iterable[str]) -> set[str]:
    return {names.full(getattr(names, t)) for t in logical}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_trainer_may_write_model_versions(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    (kafka,) = kinds(docs, "Kafka").values()
    assert not kafka["spec"]["kafka"]["authorization"].get("superUsers")
    by_service = {s.name: s for s in services(docs, monkeypatch)}
    names = by_service["trainer"].names
    topic = names.full(names.model_versions)
    writers = {u.name for u in users(docs).values() if u.allows("topic", topic, "Write")}
    assert writers == {by_service["trainer"].user}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_connects_as_its_own_user_over_scram(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (kafka,) = kinds(docs, "Kafka").values()
    listeners = {item["name"]: item for item in kafka["spec"]["kafka"]["listeners"]}
    assert listeners["plain"]["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    env = config_env(docs)
    assert env["SENTIFLOW_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["SENTIFLOW_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    known = users(docs)
    for name, doc in kinds(docs, "KafkaUser").items():
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert doc["spec"]["authentication"]["type"] == "scram-sha-512", name
    taken: dict[str, str] = {}
    for name, deployment in kinds(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        # The init container waits for the topics with the same user as the service.
        connecting = {kafka_user_of(c) for c in pod["containers"] + pod["initContainers"]}
        (user,) = connecting
        assert user in known, (name, user)
        assert taken.setdefault(user, name) == name, f"{name} shares {user} with {taken[user]}"
    assert set(taken) == set(known), "a KafkaUser no Deployment uses"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_user_may_do_what_its_service_does(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    known = users(docs)
    for service in services(docs, monkeypatch):
        user, names, flow = known[service.user], service.names, FLOWS[service.name]
        # topics wait: every topic must be visible, or it looks missing.
        for spec in topic_specs(names):
            assert user.allows("topic", spec.name, "Describe"), (service.name, spec.name)
        for topic in full(names, flow.reads) | state_topics(service.name, service.settings):
            assert user.allows("topic", topic, "Read"), (service.name, topic)
        for topic in full(names, flow.writes) | state_topics(service.name, service.settings):
            assert user.allows("topic", topic, "Write"), (service.name, topic)
        for group in groups_of(service.name, service.settings):
            assert user.allows("group", group, "Read"), (service.name, group)
        if flow.follows:
            assert user.allows("group", f"{FOLLOWER_GROUP}0123abcd", "Read"), service.name
        if "docs_dlq" in flow.writes or groups_of(service.name, service.settings):
            # Every consumer that can meet a record it cannot use dead-letters it.
            assert user.allows("topic", names.full(names.docs_dlq), "Write"), service.name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_user_may_do_more_than_its_service_does(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    known = users(docs)
    for service in services(docs, monkeypatch):
        user, names, flow = known[service.user], service.names, FLOWS[service.name]
        state = state_topics(service.name, service.settings)
        every_topic = {spec.name for spec in topic_specs(names)} | {
            spec.name for spec in changelog_specs(AlertingSettings())
        }
        for topic in every_topic:
            may_read = user.allows("topic", topic, "Read")
            may_write = user.allows("topic", topic, "Write")
            assert may_read == (topic in full(names, flow.reads) | state), (service.name, topic)
            assert may_write == (topic in full(names, flow.writes) | state), (service.name, topic)
        groups = groups_of(service.name, service.settings)
        for rule in user.rules:
            assert rule.operations <= OPERATIONS, (service.name, rule)
            assert rule.type in {"topic", "group"}, (service.name, rule)
            assert rule.host == "*", (service.name, rule)
            if rule.type == "topic" and rule.wildcard:
                assert rule.operations == {"Describe"}, (service.name, rule)
            if rule.type == "group":
                expected = (rule.name in groups and rule.pattern == "literal") or (
                    flow.follows and (rule.name, rule.pattern) == (FOLLOWER_GROUP, "prefix")
                )
                assert expected, (service.name, rule)
        # A follower prefix must never reach a real group: it would let this user
        # commit, or join, in another service's place.
        other_groups = {
            g
            for s in services(docs, monkeypatch)
            if s.name != service.name
            for g in groups_of(s.name, s.settings)
        }
        for group in other_groups - groups:
            assert not user.allows("group", group, "Read"), (service.name, group)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_inference_lag_as_the_inference_user(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    (trigger,) = [
        t
        for t in kinds(docs, "ScaledObject")["inference"]["spec"]["triggers"]
        if t["type"] == "kafka"
    ]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    auth = kinds(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    inference = next(s for s in services(docs, monkeypatch) if s.name == "inference")
    (username,) = auth["spec"]["env"]
    assert username["parameter"] == "username"
    assert username["containerName"] == "inference"
    main = container(kinds(docs, "Deployment")["inference"])
    assert env_of(main)[username["name"]]["value"] == inference.user
    (password,) = auth["spec"]["secretTargetRef"]
    assert password == {"parameter": "password", "name": inference.user, "key": "password"}
    user = users(docs)[inference.user]
    assert user.allows("topic", trigger["metadata"]["topic"], "Describe")
    assert user.allows("group", trigger["metadata"]["consumerGroup"], "Describe")
