"""One configuration file for a whole deployment, and no silently ignored setting.

Every setting is an environment variable (`ALA_<SECTION>_<KEY>`, read by the pydantic-settings classes). A TOML file
(`ala --config lab.toml ...`, or `ALA_CONFIG=lab.toml`) sets them by section, and a variable already in the
environment overrides the file:

    run = "lab"                      # ALA_RUN; also log_level, third_party_log_level, third_party_log_file
    [runtime]                        # every service's own copy: ALA_<SERVICE>_HEARTBEAT_INTERVAL_S, ...
    progress_interval_s = 30
    [nats]                           # ALA_NATS_*
    url = "nats://rtx.lab:4222"
    [learner]                        # ALA_LEARNER_*; likewise advisor, router, actor, evaluator, broker, up
    checkpoint_dir = "/data/ckpt"
    [learner.ppo]                    # a group: the keys one settings mixin declares (`settings_group`)
    learning_rate = 7e-4
    [learner.experimental]           # settings that exist for experiments only (ala.rl.config.EXPERIMENTAL)
    correction = "shortcut"
    [[advisor.advisors]]             # a list of tables: ALA_ADVISOR_ADVISORS, as JSON
    name = "gpt-oss"
    backend = "openai"

A group's keys may also be set in the section itself (`[learner] learning_rate = ...`); in a group's table, a key
of another group is refused with its own table named. `ala up` passes the applied variables on to the services it
starts. A key the section does not have, or an
`ALA_*` variable no setting reads, stops start-up with the nearest known name: a misspelt `ALA_LERNER_GAMMA` would
otherwise leave gamma at its default without a word.
"""

from __future__ import annotations

import difflib
import inspect
import json
import tomllib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import AliasChoices, BaseModel, Tag
from pydantic_settings import BaseSettings

CONFIG_VARIABLE = "ALA_CONFIG"
TOP_LEVEL = {
    "run": "ALA_RUN",
    "log_level": "ALA_LOG_LEVEL",
    "third_party_log_level": "ALA_THIRD_PARTY_LOG_LEVEL",
    "third_party_log_file": "ALA_THIRD_PARTY_LOG_FILE",
    "tensorboard_dir": "ALA_TENSORBOARD_DIR",  # the learner's and the evaluator's (ala/tensorboard.py)
}
"""Settings every service shares under one name, set at the top of the file."""
RUNTIME = "runtime"
EXPERIMENTAL_TABLE = "experimental"
NOT_SETTINGS = {
    CONFIG_VARIABLE: "this file",
    "ALA_HEALTH_PORT": "the port the container's health probe asks (python -m ala.probe)",
    "ALA_UP_LEARNER_RANKS": "ala up --learner-ranks",
    # docker compose's interpolation variables, which a shell running `docker compose` may hold
    "ALA_IMAGE": "compose: the CPU image",
    "ALA_GPU_IMAGE": "compose: the CUDA image",
    "ALA_JETSON_IMAGE": "compose: the Jetson image",
    "ALA_VLLM_IMAGE": "compose: the vLLM image",
    "ALA_PROMETHEUS_IMAGE": "compose: the Prometheus image",
    "ALA_GRAFANA_IMAGE": "compose: the Grafana image",
    "ALA_NATS_HOST": "compose: the host running NATS, for the lab overlays",
    "ALA_SECRETS_DIR": "compose: where the lab overlays find the passwords and the CA",
    "ALA_SETTINGS_FILE": "compose: the settings file compose.config.yml mounts as ALA_CONFIG",
    # the fault-injection environment of the tests and benchmarks
    "ALA_TEST_CRASH_AFTER_STEPS": "tests: the crashing env's steps before it crashes",
    "ALA_TEST_CRASH_FILE": "tests: the file the crashing env leaves",
}
"""ALA_* variables that are no setting but are read (or interpolated) by name."""


class ConfigError(ValueError):
    """A configuration file or an environment that names something no setting has."""


@dataclass(frozen=True)
class Section:
    """One table of the file: the variables its keys set."""

    name: str
    prefix: str
    keys: dict[str, str] = field(default_factory=dict)
    """key -> environment variable."""
    aliases: set[str] = field(default_factory=set)
    """Other variables the section's settings read (ALA_ENV_ID for ALA_ACTOR_ENV_ID)."""
    table_keys: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """key -> the keys of each table in it by the table's kind, for a list of tables (the advisors, by backend; ""
    for a list of one kind)."""
    table_tag: dict[str, tuple[str, str]] = field(default_factory=dict)
    """key -> (the key that names a table's kind, the kind of a table without it), for a list of several kinds."""
    experimental: set[str] = field(default_factory=set)
    """Keys that exist for experiments, set under `[<section>.experimental]` only (`ala.rl.config.EXPERIMENTAL`)."""
    groups: dict[str, str] = field(default_factory=dict)
    """key -> its group: the `settings_group` of the settings mixin that declares it (`[learner.ppo]`); keys of the
    section's own class have none."""

    def file_key(self, name: str) -> str:
        """Where `name` goes in a file, below the section: `experimental.x`, `ppo.x`, or `x`."""
        if name in self.experimental:
            return f"{EXPERIMENTAL_TABLE}.{name}"
        return f"{self.groups[name]}.{name}" if name in self.groups else name


def variables_of(settings: type[BaseSettings], field_name: str) -> list[str]:
    """The ALA_* environment variables a settings field reads, its own (`<prefix><NAME>`) first; none for a nested
    settings object (its own class reads its own variables)."""
    info = settings.model_fields[field_name]
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
        return []
    alias = info.validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    own = f"{settings.model_config.get('env_prefix', '')}{field_name}".upper()
    if isinstance(alias, AliasChoices):
        choices = [choice for choice in alias.choices if isinstance(choice, str) and choice.startswith("ALA_")]
        return sorted(choices, key=lambda choice: choice != own) if choices else [own]
    return [own]


def sections(classes: Mapping[str, type[BaseSettings]], services: tuple[str, ...]) -> dict[str, Section]:
    """Every table the file may have, from the settings classes: `classes` maps a section (nats, broker, up, and each
    service) to the class that reads it; `services` names the sections the [runtime] table applies to."""
    result: dict[str, Section] = {}
    for name, settings in classes.items():
        prefix = str(settings.model_config.get("env_prefix", "")).upper()
        section = Section(name, prefix)
        for field_name in settings.model_fields:
            variables = variables_of(settings, field_name)
            if variables and variables[0].startswith(prefix) and variables[0] not in TOP_LEVEL.values():
                section.keys[field_name] = variables[0]
            section.aliases.update(variables[1:])
            extra = settings.model_fields[field_name].json_schema_extra
            if isinstance(extra, dict) and extra.get("experimental") and field_name in section.keys:
                section.experimental.add(field_name)
            group = group_of(settings, field_name)
            if group and field_name in section.keys:
                section.groups[field_name] = group
            kinds = _list_item_kinds(settings.model_fields[field_name].annotation)
            if kinds:
                section.table_keys[field_name] = {tag: set(model.model_fields) for tag, model in kinds.items()}
                if "" not in kinds:  # a union tagged by a Literal field (the advisors' `backend`)
                    section.table_tag[field_name] = _tag_field(kinds)
        clashes = set(section.groups.values()) & (set(section.keys) | {EXPERIMENTAL_TABLE})
        if clashes:
            raise TypeError(f"[{name}]: a group has the name of a key: {sorted(clashes)}")
        result[name] = section
    result["up"].keys["learner_ranks"] = "ALA_UP_LEARNER_RANKS"
    shared = set.intersection(*(set(result[service].keys) for service in services))
    result[RUNTIME] = Section(RUNTIME, "", {key: "" for key in sorted(shared)})
    return result


def group_of(settings: type[BaseModel], field_name: str) -> str:
    """The group of a settings field: the `settings_group` of the class that declares it (the first in the MRO), or
    "" for the section's own fields."""
    for klass in settings.__mro__:
        if field_name in inspect.get_annotations(klass):
            return str(klass.__dict__.get("settings_group", ""))
    return ""


def _list_item_kinds(annotation: Any) -> dict[str, type[BaseModel]]:
    """For a `list[Model]` field (a list of tables in the file): {"": Model}; for a list of a tagged union of models
    (`Annotated[Annotated[A, Tag("a")] | ..., Discriminator(...)]`): each tag's model; else {}."""
    if get_origin(annotation) is not list:
        return {}
    (item,) = get_args(annotation)
    if isinstance(item, type) and issubclass(item, BaseModel):
        return {"": item}
    if get_origin(item) is not Annotated:
        return {}
    kinds = {}
    for member in get_args(get_args(item)[0]):
        model, *marks = get_args(member)
        tags = [mark.tag for mark in marks if isinstance(mark, Tag)]
        if tags and isinstance(model, type) and issubclass(model, BaseModel):
            kinds[tags[0]] = model
    return kinds


def _tag_field(kinds: dict[str, type[BaseModel]]) -> tuple[str, str]:
    """The field every kind declares as a one-value Literal of its tag, and the kind whose field has a default."""
    model = next(iter(kinds.values()))
    for name in model.model_fields:
        if all(
            name in kind.model_fields and get_args(kind.model_fields[name].annotation) == (tag,)
            for tag, kind in kinds.items()
        ):
            default = next((tag for tag, kind in kinds.items() if kind.model_fields[name].default == tag), "")
            return name, default
    raise TypeError(f"the union of {sorted(kinds)} has no tag field")


def known_variables(all_sections: Mapping[str, Section]) -> set[str]:
    names = set(TOP_LEVEL.values()) | set(NOT_SETTINGS)
    for section in all_sections.values():
        names.update(variable for variable in section.keys.values() if variable)
        names.update(section.aliases)
    return names


def _suggest(name: str, known: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _as_variable(value: Any) -> str:
    """A TOML value as pydantic-settings reads it from the environment: JSON for lists and tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def read(path: Path, all_sections: Mapping[str, Section], services: tuple[str, ...]) -> dict[str, str]:
    """The environment variables `path` sets. Raises ConfigError for a key no setting has, with the nearest one."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error}") from error
    return variables_from(document, all_sections, services, str(path))


def variables_from(
    document: Mapping[str, Any], all_sections: Mapping[str, Section], services: tuple[str, ...], origin: str
) -> dict[str, str]:
    """The environment variables a parsed file (or an overlay in the same format: a benchmark's arm) sets; `origin`
    names it in errors. Raises ConfigError for a key no setting has, with the nearest one."""
    path = origin
    variables: dict[str, str] = {}
    runtime: dict[str, Any] = {}
    for key, value in document.items():
        if key in TOP_LEVEL:
            variables[TOP_LEVEL[key]] = _as_variable(value)
            continue
        if key not in all_sections or not isinstance(value, dict):
            choices = [*TOP_LEVEL, *all_sections]
            raise ConfigError(f"{path}: unknown key or section {key!r}{_suggest(key, choices)}")
        section = all_sections[key]
        items = dict(value)
        experiments = items.pop(EXPERIMENTAL_TABLE, {}) if section.experimental else {}
        items |= _ungrouped(items, section, f"{path}: [{key}")
        for name in items:
            if name in section.experimental:
                raise ConfigError(
                    f"{path}: [{key}] {name!r} is experimental: set it under [{key}.{EXPERIMENTAL_TABLE}]"
                )
        for name in experiments if isinstance(experiments, dict) else [EXPERIMENTAL_TABLE]:
            if name not in section.experimental:
                known = sorted(section.experimental)
                raise ConfigError(
                    f"{path}: [{key}.{EXPERIMENTAL_TABLE}] has no setting {name!r}{_suggest(name, known)}"
                )
        for name, item in [*items.items(), *experiments.items()]:
            if name not in section.keys:
                known = [*section.keys, *set(section.groups.values())]
                raise ConfigError(f"{path}: [{key}] has no setting {name!r}{_suggest(name, known)}")
            if name in section.table_keys:
                for table in item if isinstance(item, list) else []:
                    if isinstance(table, dict):
                        _check_table(table, section, name, f"{path}: [[{key}.{name}]]")
            if key == RUNTIME:
                runtime[name] = item
            else:
                variables[section.keys[name]] = _as_variable(item)
    for service in services:  # [runtime] fills in what a service's own table left unset
        for name, item in runtime.items():
            variables.setdefault(all_sections[service].keys[name], _as_variable(item))
    return variables


def _ungrouped(items: dict[str, Any], section: Section, where: str) -> dict[str, Any]:
    """Take the group tables (`[learner.ppo]`) out of a section's `items`, and return their keys, each checked to be
    in that group; `where` opens the error's table name (`lab.toml: [learner`)."""
    found: dict[str, Any] = {}
    for group in sorted(set(section.groups.values())):
        table = items.get(group)
        if not isinstance(table, dict):
            continue
        del items[group]
        for name, item in table.items():
            if section.groups.get(name) == group:
                found[name] = item
                continue
            if name in section.keys:
                home = section.file_key(name).rpartition(".")[0]
                hint = f" (it is in [{section.name}{'.' + home if home else ''}])"
            else:
                hint = _suggest(name, [key for key, g in section.groups.items() if g == group])
            raise ConfigError(f"{where}.{group}] has no setting {name!r}{hint}")
    return found


def _check_table(table: dict[str, Any], section: Section, name: str, where: str) -> None:
    """Every key of one table in a list of tables is one its kind has (the advisors: its backend's keys)."""
    kinds = section.table_keys[name]
    kind, tag = "", "kind"
    if name in section.table_tag:
        tag, default = section.table_tag[name]
        kind = str(table.get(tag, default))
        if kind not in kinds:
            raise ConfigError(f"{where} has no {tag} {kind!r}{_suggest(kind, sorted(kinds))}")
        where = f"{where} ({tag} {kind})"
    for table_key in table:
        if table_key in kinds[kind]:
            continue
        elsewhere = sorted(other for other, keys in kinds.items() if table_key in keys)
        close = _suggest(table_key, sorted(kinds[kind]))
        hint = f" (only {tag} {' and '.join(elsewhere)} has it)" if elsewhere else close
        raise ConfigError(f"{where} has no key {table_key!r}{hint}")


def apply(variables: Mapping[str, str], environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set the file's variables that the environment does not already set (the environment overrides the file);
    returns those set."""
    applied = {name: value for name, value in variables.items() if name not in environ}
    environ.update(applied)
    return applied


def check_environment(environ: Mapping[str, str], known: set[str]) -> None:
    """Raise ConfigError naming every ALA_* variable that no setting reads, each with the nearest known name."""
    unknown = sorted(name for name in environ if name.startswith("ALA_") and name not in known)
    if unknown:
        lines = [f"  {name}{_suggest(name, known)}" for name in unknown]
        raise ConfigError(
            "unknown ALA_* environment variable(s), which no setting reads:\n"
            + "\n".join(lines)
            + "\n(`ala config show` lists every setting and its variable)"
        )
