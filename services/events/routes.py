"""routes.yml: what the event service runs, for which event, with which parameters.

One file, validated whole at start-up (:func:`load_routes`); an error names the file, the route
or schedule and the field (``routes.yml: route 'aws-hourly': field 'then.0.process': …``).

```yaml
routes:                        # messages in -> process runs
  - name: aws-hourly           # unique; part of the idempotency key of its runs
    topic: bucket              # MQTT topic filter below events_topic_root (+ and # allowed)
    source: object             # object: S3/MinIO bucket notifications; event: our own JSON events
    key: "incoming/aws/*.csv"  # object key pattern ('*' within one folder level, '**' across levels)
    process: ingest_file       # an OGC API process (a notebook)
    parameters:                # values, or templates: "{object.key}" (a whole-string template keeps
      object_key: "{object.key}"   #  the value's type: lists stay lists)
    ledger: true               # the process records the object in the ingest ledger (the sweep
                               # skips objects the ledger has loaded)
    then:                      # a chain: after the run succeeded
      - process: qc_run
        parameters: {stations: "{loaded.stations}", start: "{loaded.start}", end: "{loaded.end}"}
schedules:
  - name: monthly-report
    cron: "0 6 3 * *"          # five-field cron; none: on demand only
    timezone: Africa/Lagos     # IANA name; the cron is read in it
    process: monthly_report
    parameters: {month: "{fire.previous_month}"}
    missed: run_once           # run_once: a fire time missed while the service was down runs once
                               # at start (coalesced); skip: it does not
```

Templates: ``object.key|etag|size|name|stem|folder`` and ``event.*`` (the bucket event's
``name`` and ``time``; an ``event`` route's whole JSON payload, by dotted path) for routes;
``fire.time|date|month|year|previous_day|previous_month|previous_year`` and ``schedule.name``
for schedules; in chain steps also ``parent.id|process|parameters.<name>`` and
``loaded.stations|start|end`` (what the parent's ingest loaded; a step using ``loaded`` is left
out when nothing was loaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opencdms_kernel.settings import Settings
from services.events.errors import RoutesError, TemplateError

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
# A whole-string template, e.g. "{loaded.stations}": replaced by the value itself, any type.
_WHOLE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}$")
# Templates inside text, e.g. "reports/{fire.month}.html": replaced by the value as text.
_INNER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")
_PROCESS = r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"

OBJECT_VALUES = ("object.key", "object.etag", "object.size", "object.name", "object.stem", "object.folder",
                 "event.name", "event.time", "route.name")
FIRE_VALUES = ("fire.time", "fire.date", "fire.month", "fire.year", "fire.previous_day", "fire.previous_month",
               "fire.previous_year", "schedule.name")
CHAIN_VALUES = ("parent.id", "parent.process", "loaded.stations", "loaded.start", "loaded.end")


def routes_file(settings: Settings) -> Path:
    """The routes file in force: ``events_routes_file`` or the one shipped beside this module."""
    if settings.events_routes_file is None:
        return Path(__file__).resolve().parent / "routes.yml"
    path = settings.events_routes_file
    return path if path.is_absolute() else settings.home / path


# --------------------------------------------------------------------------- key patterns


def key_pattern(glob: str) -> re.Pattern[str]:
    """A key glob as a regular expression: ``*`` and ``?`` stay within one level, ``**`` crosses levels."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            parts.append("(?:[^/]+/)*")
            index += 3
        elif glob.startswith("**", index):
            parts.append(".*")
            index += 2
        elif char == "*":
            parts.append("[^/]*")
            index += 1
        elif char == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(char))
            index += 1
    return re.compile("".join(parts) + r"\Z")


def glob_prefix(glob: str) -> str:
    """The fixed folder a key glob starts with (``incoming/aws/`` for ``incoming/aws/*.csv``)."""
    fixed = re.split(r"[*?]", glob, maxsplit=1)[0]
    return fixed[: fixed.rfind("/") + 1]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether an MQTT topic matches a filter (``+`` one level, ``#`` the rest)."""
    wanted = topic_filter.split("/")
    got = topic.split("/")
    for position, level in enumerate(wanted):
        if level == "#":
            return True
        if position >= len(got):
            return False
        if level != "+" and level != got[position]:
            return False
    return len(got) == len(wanted)


# --------------------------------------------------------------------------- templates


def template_names(value: Any) -> Iterator[str]:
    """Every ``{name}`` a parameter value uses (inside lists and mappings too)."""
    if isinstance(value, str):
        yield from _INNER.findall(value)
    elif isinstance(value, list):
        for item in value:
            yield from template_names(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from template_names(item)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with its templates filled from ``context`` (dotted names; TemplateError if one is missing)."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return lookup(context, whole.group(1))
        return _INNER.sub(lambda match: _text(lookup(context, match.group(1))), value)
    if isinstance(value, list):
        return [render(item, context) for item in value]
    if isinstance(value, dict):
        return {name: render(item, context) for name, item in value.items()}
    return value


def lookup(context: Mapping[str, Any], name: str) -> Any:
    """The value at dotted ``name`` in ``context``; TemplateError naming it when absent."""
    current: Any = context
    for part in name.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            raise TemplateError(f"template {{{name}}}: the event has no value {name!r}")
    return current


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise TemplateError(f"a list, mapping or null cannot be put inside text ({value!r:.60})")
    return str(value)


# --------------------------------------------------------------------------- the file's models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(str, Enum):
    """What a route's messages are."""

    OBJECT = "object"  # S3/MinIO bucket notification (Records[].s3.object.key/eTag)
    EVENT = "event"  # a JSON event of ours (job finished, data ingested…)


class MissedPolicy(str, Enum):
    """What a schedule does about fire times missed while the service was down."""

    RUN_ONCE = "run_once"
    SKIP = "skip"


class ChainStep(_Strict):
    """A process run after its parent run succeeded."""

    process: str = Field(pattern=_PROCESS)
    parameters: dict[str, Any] = Field(default_factory=dict)
    then: list["ChainStep"] = Field(default_factory=list)

    @property
    def needs_loaded(self) -> bool:
        """True when the step uses what the parent's ingest loaded (it is left out when nothing was)."""
        return any(name.startswith("loaded.") for name in template_names(self.parameters))


class Route(_Strict):
    """Messages on ``topic`` (and, for objects, keys matching ``key``) run ``process``."""

    name: str = Field(pattern=NAME_PATTERN)
    topic: str = Field(min_length=1, max_length=200)
    source: Source = Source.OBJECT
    key: str | None = Field(default=None, min_length=1, max_length=500)
    match: dict[str, Any] = Field(default_factory=dict)
    process: str = Field(pattern=_PROCESS)
    parameters: dict[str, Any] = Field(default_factory=dict)
    ledger: bool = False
    sweep: bool = True
    then: list[ChainStep] = Field(default_factory=list)

    @field_validator("topic")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        levels = value.split("/")
        if value.startswith(("/", "$")) or any(level == "" for level in levels):
            raise ValueError("a topic filter below the root: no leading '/', '$' or empty level")
        for position, level in enumerate(levels):
            if "#" in level and (level != "#" or position != len(levels) - 1):
                raise ValueError("'#' must be a whole level and the last one")
            if "+" in level and level != "+":
                raise ValueError("'+' must be a whole level")
        return value

    @model_validator(mode="after")
    def _key_for_objects(self) -> "Route":
        if self.source is Source.OBJECT and self.key is None:
            raise ValueError("a route of bucket objects needs 'key' (e.g. incoming/aws/*.csv)")
        if self.source is Source.EVENT and self.key is not None:
            raise ValueError("'key' is for bucket objects; an event route filters with 'match'")
        if self.source is Source.EVENT and (self.ledger or "sweep" in self.model_fields_set):
            raise ValueError("'ledger' and 'sweep' are for bucket objects")
        return self

    @cached_property
    def key_regex(self) -> re.Pattern[str]:
        """The compiled key pattern (object routes)."""
        return key_pattern(self.key or "")

    def matches_key(self, key: str) -> bool:
        """Whether an object key is this route's."""
        return self.source is Source.OBJECT and self.key_regex.match(key) is not None

    def matches_event(self, payload: Mapping[str, Any]) -> bool:
        """Whether a JSON event passes ``match`` (each dotted field equal to the value, or one of a list)."""
        for name, wanted in self.match.items():
            try:
                got = lookup(payload, name)
            except TemplateError:
                return False
            if isinstance(wanted, list) and not isinstance(got, list):
                if got not in wanted:
                    return False
            elif got != wanted:
                return False
        return True


class Schedule(_Strict):
    """A process run on a cron schedule (or on demand only, without ``cron``)."""

    name: str = Field(pattern=NAME_PATTERN)
    cron: str | None = None
    timezone: str = "UTC"
    process: str = Field(pattern=_PROCESS)
    parameters: dict[str, Any] = Field(default_factory=dict)
    missed: MissedPolicy = MissedPolicy.RUN_ONCE
    then: list[ChainStep] = Field(default_factory=list)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is None:
            return None
        if len(value.split()) != 5:
            raise ValueError(f"{value!r}: five fields (minute hour day month weekday) are expected")
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)


class RoutesConfig(_Strict):
    """The whole routes.yml."""

    routes: list[Route] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)

    def route(self, name: str) -> Route:
        """The route called ``name`` (KeyError when there is none)."""
        for route in self.routes:
            if route.name == name:
                return route
        raise KeyError(name)

    def schedule(self, name: str) -> Schedule:
        """The schedule called ``name`` (KeyError when there is none)."""
        for schedule in self.schedules:
            if schedule.name == name:
                return schedule
        raise KeyError(name)

    def topic_filters(self) -> list[str]:
        """The routes' topic filters, each once, in file order."""
        return list(dict.fromkeys(route.topic for route in self.routes))

    def processes(self) -> set[str]:
        """Every process a route, schedule or chain step runs."""
        found: set[str] = set()

        def steps(chain: list[ChainStep]) -> None:
            for step in chain:
                found.add(step.process)
                steps(step.then)

        for entry in [*self.routes, *self.schedules]:
            found.add(entry.process)
            steps(entry.then)
        return found


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Checked:
    """The parameters of one route, schedule or chain step, and the template names allowed in them."""

    where: str
    field: str
    names: tuple[str, ...]
    parameters: dict[str, Any]


def load_routes(path: Path) -> RoutesConfig:
    """Read and validate ``path``; RoutesError naming the route or schedule and the field at fault."""
    label = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(str(path), None, None, f"cannot be read ({exc.strerror or exc})") from exc
    return parse_routes(text, label)


def parse_routes(text: str, label: str = "routes.yml") -> RoutesConfig:
    """Validate the text of a routes file (``label`` names it in errors)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise RoutesError(label, where, None, f"not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RoutesError(label, None, None, "must be a mapping with 'routes' and 'schedules'")
    try:
        config = RoutesConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where, field = _locate(raw, list(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        raise RoutesError(label, where, field, message) from None
    _check_unique(label, config)
    for entry in [*config.routes, *config.schedules]:
        ledger = isinstance(entry, Route) and entry.ledger
        if not ledger and _uses_loaded(entry.then):
            kind = "route" if isinstance(entry, Route) else "schedule"
            raise RoutesError(label, f"{kind} {entry.name!r}", "then", "{loaded.…} needs 'ledger: true': the "
                              "route's process must record what it loads in the ingest ledger")
    for check in _template_checks(config):
        allowed = check.names
        for parameter, value in check.parameters.items():
            for name in template_names(value):
                known = name in allowed or any(name.startswith(prefix) for prefix in allowed if prefix.endswith("."))
                if not known:
                    shown = ", ".join(entry + "…" if entry.endswith(".") else entry for entry in allowed)
                    raise RoutesError(label, check.where, f"{check.field}.{parameter}",
                                      f"template {{{name}}} is not known here (known: {shown})")
    return config


def _uses_loaded(steps: list[ChainStep]) -> bool:
    return any(step.needs_loaded or _uses_loaded(step.then) for step in steps)


def _locate(raw: dict[str, Any], loc: list[Any]) -> tuple[str | None, str | None]:
    """Where a pydantic error is, as ('route \\'name\\'', 'field.path')."""
    if len(loc) >= 2 and loc[0] in ("routes", "schedules") and isinstance(loc[1], int):
        kind = "route" if loc[0] == "routes" else "schedule"
        entries = raw.get(loc[0]) or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"{kind} {name!r}" if isinstance(name, str) else f"{kind} #{loc[1] + 1}"
        field = ".".join(str(part) for part in loc[2:]) or None
        return where, field
    return None, ".".join(str(part) for part in loc) or None


def _check_unique(label: str, config: RoutesConfig) -> None:
    for kind, entries in (("route", config.routes), ("schedule", config.schedules)):
        seen: set[str] = set()
        for entry in entries:
            if entry.name in seen:
                raise RoutesError(label, f"{kind} {entry.name!r}", "name", f"another {kind} is called {entry.name!r}")
            seen.add(entry.name)


def _template_checks(config: RoutesConfig) -> Iterator[_Checked]:
    for route in config.routes:
        base = OBJECT_VALUES if route.source is Source.OBJECT else ("event.", "topic", "route.name")
        yield _Checked(f"route {route.name!r}", "parameters", base, route.parameters)
        yield from _chain_checks(f"route {route.name!r}", "then", route.then, base)
    for schedule in config.schedules:
        yield _Checked(f"schedule {schedule.name!r}", "parameters", FIRE_VALUES, schedule.parameters)
        yield from _chain_checks(f"schedule {schedule.name!r}", "then", schedule.then, FIRE_VALUES)


def _chain_checks(where: str, field: str, steps: list[ChainStep], base: tuple[str, ...]) -> Iterator[_Checked]:
    for position, step in enumerate(steps):
        here = f"{field}.{position}"
        yield _Checked(where, f"{here}.parameters", (*base, *CHAIN_VALUES, "parent.parameters."), step.parameters)
        yield from _chain_checks(where, f"{here}.then", step.then, base)


def fire_values(schedule: Schedule, fire: datetime) -> dict[str, Any]:
    """The ``fire.*`` and ``schedule.*`` template values of a schedule's fire time (read in its zone)."""
    local = fire.astimezone(schedule.zone)
    day = local.date()
    previous_day = day.toordinal() - 1
    month_index = local.year * 12 + local.month - 1 - 1
    previous_month = f"{month_index // 12:04d}-{month_index % 12 + 1:02d}"
    return {
        "fire": {
            "time": fire.isoformat(), "date": day.isoformat(), "month": f"{local.year:04d}-{local.month:02d}",
            "year": local.year, "previous_day": date.fromordinal(previous_day).isoformat(),
            "previous_month": previous_month, "previous_year": local.year - 1,
        },
        "schedule": {"name": schedule.name},
    }
