"""Who hears about an incident, where and when: delivery targets, routes, shifts, quiet hours."""

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config.base import (
    Duration,
    ExistingFile,
    Loc,
    Name,
    NonBlank,
    Section,
    loading_of,
    raise_problems,
    reason,
)
from agent.config.bounds import within
from agent.config.secrets import SecretFile, find_secret, inline_secret

Severity = Literal["warn", "alarm"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _clock(v: Any) -> time:
    if isinstance(v, int) and not isinstance(v, bool):  # YAML reads 06:00 as 360 (sexagesimal)
        v = f"{v // 60:02d}:{v % 60:02d}"
    if isinstance(v, time):
        return v
    if not isinstance(v, str) or not re.fullmatch(r"\d{1,2}:\d{2}", v.strip()):
        raise reason(f'{v!r} is not a time of day: write e.g. "06:00" or "22:30"')
    hours, minutes = (int(p) for p in v.strip().split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise reason(f"{v!r} is not a time of day")
    return time(0, 0) if hours == 24 else time(hours, minutes)


def _days(v: Any) -> tuple[int, ...]:
    """``mon-fri``, ``sat,sun``, ``daily`` → weekday numbers (Monday 0)."""
    if isinstance(v, list):
        v = ",".join(str(x) for x in v)
    text = str(v).strip().lower()
    if text in ("daily", "every day", "all"):
        return tuple(range(7))
    out: list[int] = []
    for item in text.split(","):
        part = item.strip()
        first, _, last = part.partition("-")
        if first[:3] not in _DAYS or (last and last[:3] not in _DAYS):
            raise reason(f"{part!r} is not a day or a range of days: write e.g. mon-fri, sat,sun")
        a = _DAYS.index(first[:3])
        b = _DAYS.index(last[:3]) if last else a
        out += [d % 7 for d in range(a, b + 1 if b >= a else b + 8)]
    return tuple(sorted(set(out)))


def is_address(text: str) -> bool:
    """Whether a text is a plain e-mail address (name@domain.tld)."""
    local, at, domain = text.rpartition("@")
    return bool(at and local and "." in domain.strip(".")) and not any(
        c.isspace() or c in '<>,;"' for c in text
    )


def _address(v: str) -> str:
    if not is_address(v.strip()):
        raise reason(f"{v!r} is not an e-mail address: write e.g. supervisors@atelier.example")
    return v.strip()


Clock = Annotated[time, BeforeValidator(_clock)]
Address = Annotated[str, AfterValidator(_address)]
Days = Annotated[tuple[int, ...], BeforeValidator(_days)]


class _Target(Section):
    """What every delivery target has: a name routes refer to."""

    name: Name


class WebhookTarget(_Target):
    """A plain JSON POST to any HTTP endpoint (an MES, a ticket system, a custom screen)."""

    type: Literal["webhook"]
    url: Annotated[str, AfterValidator(lambda v: _url(v, ("http", "https")))]
    template: str | None = Field(
        default=None,
        description="JSON body with $placeholders (see docs/alerts.md); None: the standard body",
    )
    headers: dict[NonBlank, str] = Field(default_factory=dict)
    timeout: Annotated[Duration, within("notify.timeout")] = 10.0


class EmailTarget(_Target):
    """E-mail through an SMTP server (STARTTLS, login); incidents close together go in one mail."""

    type: Literal["email"]
    host: NonBlank
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=587, description="587 (STARTTLS); 465 is the default with tls: true"
    )
    starttls: bool = Field(default=True, description="upgrade with STARTTLS (required if on)")
    tls: bool = Field(default=False, description="implicit TLS (port 465)")
    ca_file: ExistingFile | None = Field(
        default=None, description="CA (or self-signed certificate) of a private SMTP server"
    )
    username: NonBlank | None = Field(default=None, description="log in as this user")
    password_file: SecretFile | None = None
    sender: Address = Field(description="From: address, e.g. driftgate@atelier.example")
    to: list[Address] = Field(default_factory=list, description="default recipients")
    batch_window: Annotated[Duration, within("notify.batch_window")] = Field(
        default=60.0, description="incidents opened within this are sent in one mail"
    )
    timeout: Annotated[Duration, within("notify.timeout")] = Field(
        default=20.0, description="connecting, and each SMTP command; a mail never waits longer"
    )
    password: SecretStr | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_secret(cls, v: Any, info: ValidationInfo) -> Any:
        if loading_of(info) is not None:
            raise inline_secret(info, "DRIFTGATE_SMTP_PASSWORD", "smtp_password")
        return v

    @model_validator(mode="after")
    def _tls_and_login(self, info: ValidationInfo) -> "EmailTarget":
        problems: list[tuple[Loc, str]] = []
        update: dict[str, Any] = {}
        if self.tls and self.starttls:
            if "starttls" in self.model_fields_set:
                problems.append(
                    (("starttls",), "tls (implicit TLS, port 465) and starttls (port 587) "
                     "exclude each other: keep one")
                )  # fmt: skip
            update["starttls"] = False  # tls: true alone means implicit TLS
        if self.tls and "port" not in self.model_fields_set:
            update["port"] = 465
        if self.password_file is not None and self.username is None:
            problems.append((("username",), "password_file is set: give the username too"))
        loading = loading_of(info)
        if loading is not None and self.username is not None and not problems:
            password = find_secret(
                loading, self.password_file, "DRIFTGATE_SMTP_PASSWORD", "smtp_password", problems
            )
            if password is not None:
                update["password"] = password
            elif not problems:
                problems.append(
                    (("username",), f"username {self.username!r} is set but no password was "
                     "found: set password_file, or DRIFTGATE_SMTP_PASSWORD, or systemd "
                     "LoadCredential=smtp_password:/etc/driftgate/smtp-password")
                )  # fmt: skip
        raise_problems("EmailTarget", problems)
        return self.model_copy(update=update) if update else self


class AppriseTarget(_Target):
    """Chat and push services (Teams, Slack, ntfy, Telegram, SMS gateways, …) by apprise URL."""

    type: Literal["apprise"]
    urls_file: SecretFile = Field(
        description="one apprise URL per line, # for comments (they hold tokens: keep the "
        "file private)"
    )
    timeout: Annotated[Duration, within("notify.timeout")] = Field(
        default=30.0, description="one notice to one URL never waits longer"
    )

    @model_validator(mode="after")
    def _urls(self, info: ValidationInfo) -> "AppriseTarget":
        loading = loading_of(info)
        if loading is None or self.urls_file not in loading.secrets:
            return self
        try:
            urls = apprise_urls(loading.secrets[self.urls_file])
        except ValueError as exc:
            raise_problems("AppriseTarget", [(("urls_file",), f"{self.urls_file}: {exc}")])
            return self
        if not urls:
            raise_problems(
                "AppriseTarget",
                [(("urls_file",), f"{self.urls_file} holds no URL: write one apprise URL per "
                  "line, e.g. ntfy://ntfy.example/floor-alerts")],
            )  # fmt: skip
        return self


_URL_LINE = re.compile(r"[a-z][a-z0-9+.-]{0,31}://\S+", re.IGNORECASE)


def apprise_urls(text: str) -> list[tuple[int, str]]:
    """The (line number, URL) of an apprise URLs file: one URL per line, blank lines and # comments
    left out. Raises ValueError naming the first bad line, never its content (URLs are secret)."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _URL_LINE.fullmatch(line):
            what = "it has spaces" if "://" in line else "it has no scheme://"
            raise ValueError(
                f"line {number} is not one apprise URL ({what}): write one URL per line, e.g. "
                "ntfy://ntfy.example/floor-alerts, and # before a comment"
            )
        out.append((number, line))
    return out


GpioPin = Annotated[int, Field(ge=0, le=27, description="BCM number (GPIO17 is 17)")]


class StacklightPins(Section):
    """The Raspberry Pi GPIO pins of a tower light's lamps (BCM numbers), through relays or
    transistors."""

    red: GpioPin
    amber: GpioPin
    green: GpioPin
    buzzer: GpioPin | None = None
    active_high: bool = Field(
        default=True, description="false for relay boards that switch on a low pin"
    )

    @model_validator(mode="after")
    def _distinct(self) -> "StacklightPins":
        seen: dict[int, str] = {}
        problems: list[tuple[Loc, str]] = []
        for lamp in ("red", "amber", "green", "buzzer"):
            pin = getattr(self, lamp)
            if pin is None:
                continue
            if pin in seen:
                problems.append(((lamp,), f"GPIO{pin} is already the {seen[pin]} pin"))
            seen.setdefault(pin, lamp)
        raise_problems("StacklightPins", problems)
        return self


class StacklightTarget(_Target):
    """A tower light on the line: the worst open severity of its zone, buzzer on alarm.

    Not routed: it shows the current state of its zone's incidents, whatever the routes say.
    """

    type: Literal["stacklight"]
    zone: NonBlank | None = Field(default=None, description="None: every zone")
    profile: NonBlank | None = Field(
        default=None,
        description="command profile of a serial light: a shipped name (adafruit-tower-light) "
        "or a path to a profile YAML",
    )
    port: NonBlank | None = Field(default=None, description="serial port (by-id path)")
    baud: Annotated[int, Field(ge=50, le=4_000_000)] | None = Field(
        default=None, description="None: the profile's"
    )
    gpio: StacklightPins | None = Field(
        default=None, description="Raspberry Pi GPIO pins instead of a serial light"
    )
    refresh: Annotated[Duration, within("notify.refresh")] = Field(
        default=60.0, description="send the state again this often (a light that lost power)"
    )
    reconnect_max: Annotated[Duration, within("sources.reconnect_max")] = Field(
        default=5.0, description="after an unplug, show the state within this of the replug"
    )
    blink_unacknowledged: bool = Field(
        default=False, description="the lit lamp blinks while its incidents are unacknowledged"
    )

    @model_validator(mode="after")
    def _one_way(self) -> "StacklightTarget":
        problems: list[tuple[Loc, str]] = []
        if (self.port is None) == (self.gpio is None):
            problems.append((("port",), "give either port (serial) or gpio (pins)"))
        elif self.port is not None and self.profile is None:
            problems.append(
                (("profile",), "a serial light needs one: adafruit-tower-light, lcus-relay, a path")
            )
        elif self.gpio is not None:
            problems += [
                ((key,), f"{key} is for serial lights (port:); a GPIO light has only its pins")
                for key in ("profile", "baud")
                if getattr(self, key) is not None
            ]
        raise_problems("StacklightTarget", problems)
        return self


Target = Annotated[
    WebhookTarget | EmailTarget | AppriseTarget | StacklightTarget, Field(discriminator="type")
]
TARGET_TYPES = ("webhook", "email", "apprise", "stacklight")


def _url(v: str, schemes: tuple[str, ...]) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(v.strip())
    if parts.scheme not in schemes or not parts.hostname:
        raise reason(f"{v!r} is not a URL ({' or '.join(s + '://' for s in schemes)})")
    return v.strip()


class ShiftConfig(Section):
    """Who is on duty when: a shift's recipients take a route's incidents during the shift."""

    name: Name
    days: Days = Field(default=tuple(range(7)), description="mon-fri, sat,sun, daily")
    start: Clock
    end: Clock = Field(description="may be before start: a night shift ends the next day")
    to: list[NonBlank] = Field(description="targets, or target:recipient (email:alice@…)")


class QuietHours(Section):
    """Hours when only alarms are delivered; warnings wait in the outbox until the hours end."""

    start: Clock
    end: Clock
    deliver: Severity = Field(default="alarm", description="severities still delivered")


class RateLimit(Section):
    """At most ``count`` notices per recipient per ``per``; the rest wait in the outbox until
    the window lets them go."""

    count: Annotated[int, Field(ge=1)] = 10
    per: Annotated[Duration, within("notify.rate_limit.per")] = 3600.0


class RouteMatch(Section):
    """Which incidents a route takes (every field left out matches everything)."""

    zones: list[NonBlank] = Field(default_factory=list)
    channels: list[NonBlank] = Field(default_factory=list, description="names or prefixes*")
    kinds: list[NonBlank] = Field(default_factory=list)
    severity: Severity = Field(default="warn", description="the lowest severity taken")


class RouteConfig(Section):
    """A rule: these incidents go to these targets, with shifts, quiet hours, escalation."""

    name: Name
    match: RouteMatch = Field(default_factory=RouteMatch)
    to: list[NonBlank] = Field(
        default_factory=list, description="targets, or target:recipient; shifts override"
    )
    shifts: list[ShiftConfig] = Field(default_factory=list)
    quiet_hours: QuietHours | None = None
    rate_limit: RateLimit | None = Field(default_factory=RateLimit)
    escalate_after: Annotated[Duration, within("notify.escalate_after")] | None = Field(
        default=None, description="not acknowledged within this: the escalate_to route too"
    )
    escalate_to: NonBlank | None = None

    @model_validator(mode="after")
    def _escalation(self) -> "RouteConfig":
        problems: list[tuple[Loc, str]] = []
        if (self.escalate_after is None) != (self.escalate_to is None):
            problems.append((("escalate_to",), "escalate_after and escalate_to go together"))
        if not self.to and not self.shifts:
            problems.append((("to",), "a route needs `to:` targets or `shifts:`"))
        raise_problems("RouteConfig", problems)
        return self


class NotifyConfig(Section):
    """Delivery of incident notices: named targets and the routes that use them."""

    targets: list[Target] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    max_attempts: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="give up a delivery after this many tries (None: never)"
    )

    @model_validator(mode="after")
    def _references(self) -> "NotifyConfig":
        by_name = {t.name: t for t in self.targets}
        targets = set(by_name)
        lights = {t.name for t in self.targets if isinstance(t, StacklightTarget)}
        routes = {r.name for r in self.routes}
        problems: list[tuple[Loc, str]] = []
        first: dict[str, int] = {}
        for i, target in enumerate(self.targets):
            if target.name in first:
                problems.append(
                    (
                        ("targets", i, "name"),
                        f"{target.name!r} is already the name of targets[{first[target.name]}]",
                    )
                )
            first.setdefault(target.name, i)
        for i, route in enumerate(self.routes):
            entries: list[tuple[Loc, str]] = [
                (("routes", i, "to", j), e) for j, e in enumerate(route.to)
            ]
            for k, shift in enumerate(route.shifts):
                entries += [
                    (("routes", i, "shifts", k, "to", j), e) for j, e in enumerate(shift.to)
                ]
            for loc, entry in entries:
                name, _, recipient = entry.partition(":")
                if name in lights:
                    problems.append(
                        (
                            loc,
                            f"{name!r} is a stack light: it shows the state of its zone by "
                            "itself and takes no notices; remove it from this route",
                        )
                    )
                    continue
                if name not in targets:
                    known = ", ".join(sorted(targets - lights)) or "none yet: add notify.targets"
                    problems.append((loc, f"no target named {name!r} (targets: {known})"))
                    continue
                problem = _recipient_problem(by_name[name], recipient)
                if problem:
                    problems.append((loc, problem))
            if route.escalate_to is not None and route.escalate_to not in routes:
                problems.append(
                    (("routes", i, "escalate_to"), f"no route named {route.escalate_to!r}")
                )
        raise_problems("NotifyConfig", problems)
        return self


def _recipient_problem(target: Target, recipient: str) -> str:
    """What is wrong with addressing ``recipient`` through a target ("" when nothing)."""
    name = target.name
    if isinstance(target, EmailTarget):
        if not recipient and not target.to:
            return (f"e-mail target {name!r} has no default recipients: give it `to:` "
                    f"addresses, or write {name}:someone@atelier.example here")  # fmt: skip
        if recipient and not is_address(recipient):
            return (
                f"{recipient!r} is not an e-mail address: write e.g. {name}:marie@atelier.example"
            )
    if isinstance(target, AppriseTarget) and recipient:
        return (f"{name!r} is an apprise target: it sends to every URL in its urls_file and "
                f"takes no recipient; for different people give each their own apprise target "
                f"and URLs file")  # fmt: skip
    return ""


class IncidentsConfig(Section):
    """How detector events become incidents people are told about."""

    group: Literal["channel", "zone"] = Field(
        default="channel", description="one incident per channel, or per zone"
    )
    keep_cleared: Annotated[Duration, within("incidents.keep_cleared")] = Field(
        default=7 * 86400.0, description="cleared incidents stay listed this long"
    )
    actions: dict[NonBlank, str] = Field(
        default_factory=dict,
        description="what to do, per channel kind (climate, tension, color), when a channel "
        "has no action of its own",
    )
    mqtt: bool = Field(
        default=True,
        description="publish every open incident retained on driftgate/<site>/<gateway>/incidents",
    )
