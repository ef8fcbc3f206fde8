"""E-mail notices against a real SMTP server (aiosmtpd on 127.0.0.1): what a mail says, batching
of incidents opened close together, login, STARTTLS and implicit TLS, and an outage followed by
recovery in which every notice arrives exactly once."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from examples import EXAMPLE, SMTP_PASSWORD, uncomment_notify, with_local_files
from mailserver import MailServer, self_signed
from notices import Notices, Recording, Running, agent_config, delivery
from servers import free_port

from agent.cli import main as cli_main
from agent.config import load_config
from agent.config.notify import EmailTarget
from agent.drift.alerts import Level
from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.notify.email import Email, EmailError, message_id
from agent.notify.outbox import NotTried, NotYet
from agent.notify.targets import make_target, origin_of
from agent.notify.text import Origin

ROOT = Path(__file__).resolve().parent.parent
SENDER = "driftgate@atelier-nord.example"
SUPERVISORS = "supervisors@atelier-nord.example"
PASSWORD = "Sm7p-hunter2-secret"


def email_target(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "email",
        "name": "email",
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "sender": SENDER,
        "to": [SUPERVISORS],
        **extra,
    }


def notify(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "targets": [email_target(port, **extra)],
        "routes": [{"name": "supervisors", "to": ["email"], "rate_limit": None}],
    }


def the_email(cfg: Any, clock: Any = None) -> Email:
    target = cfg.notify.targets[0]
    assert isinstance(target, EmailTarget)
    return Email(target, origin_of(cfg), **({"clock": clock} if clock else {}))


# ------------------------------------------------------------------------- what a mail says


def test_config_resolves_the_smtp_password_and_never_takes_it_inline(tmp_path: Path) -> None:
    def load(extra: str, env: dict[str, str]) -> Any:
        path = tmp_path / "agent.yaml"
        path.write_text(
            "site: s\ngateway: g\nnotify:\n  targets:\n    - type: email\n      name: mail\n"
            f"      host: smtp.example\n      sender: {SENDER}\n      to: [{SUPERVISORS}]\n" + extra
        )
        return load_config(path, env=env)

    user = "      username: driftgate\n"
    from_env = load(user, {"DRIFTGATE_SMTP_PASSWORD": PASSWORD}).notify.targets[0]
    assert from_env.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(from_env)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp_password").write_text(PASSWORD + "\n")
    from_credential = load(user, {"CREDENTIALS_DIRECTORY": str(creds)}).notify.targets[0]
    assert from_credential.password.get_secret_value() == PASSWORD

    with pytest.raises(ConfigError) as caught:
        load(user + f"      password: {PASSWORD}\n", {})
    assert "inline secrets are not allowed" in str(caught.value.problems)
    assert PASSWORD not in str(caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        load(user, {})
    assert "no password was found: set password_file, or DRIFTGATE_SMTP_PASSWORD" in str(
        caught.value.problems
    )
    implicit = load("      tls: true\n      starttls: false\n", {}).notify.targets[0]
    assert (implicit.port, implicit.starttls) == (465, False)
    assert load("      tls: true\n", {}).notify.targets[0].starttls is False
    with pytest.raises(ConfigError, match="exclude each other"):
        load("      tls: true\n      starttls: true\n", {})


def test_routes_to_e_mail_need_addresses(tmp_path: Path) -> None:
    base = {"type": "email", "name": "email", "host": "h", "sender": SENDER}
    with pytest.raises(ConfigError) as caught:
        agent_config(
            tmp_path,
            {
                "targets": [base],
                "routes": [{"name": "a", "to": ["email"]}, {"name": "b", "to": ["email:marie"]}],
            },
        )
    problems = "\n".join(caught.value.problems)
    assert "notify.routes[0].to[0]: e-mail target 'email' has no default recipients" in problems
    assert "notify.routes[1].to[0]: 'marie' is not an e-mail address" in problems
    with pytest.raises(ConfigError, match="is not an e-mail address"):
        agent_config(tmp_path, {"targets": [{**base, "to": ["supervisors at atelier"]}]})


async def test_a_mail_says_what_happened_what_to_do_and_how_to_acknowledge(
    tmp_path: Path,
) -> None:
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port), mqtt={"host": "127.0.0.1"})
        notices = Notices(cfg)
        notices.lot("edge_paint", "LOT-2411-B")
        notice = notices.event("edge_paint.humidity", Level.ALARM, value=53.1, baseline=50.1)
        target = the_email(cfg)
        assert await target.send([delivery(notice)]) == [None]
        (mail,) = smtp.mails

    assert mail.subject == "ALARM: Edge paint room humidity (opened) — atelier-nord/gw1"
    assert mail.rcpt_tos == [SUPERVISORS]
    assert mail.mail_from == SENDER
    assert str(mail.message["From"]) == f"driftgate atelier-nord/gw1 <{SENDER}>"
    key = "20261117-0001:1:supervisors:email"
    assert str(mail.message["Message-ID"]).strip() == message_id([key], SENDER)
    assert mail.notice_keys() == [key]
    text = mail.text()
    lines = text.splitlines()
    # The sentence first, in plain words and Paris time, with what to do and the lots.
    assert lines[0] == notice.sentence
    assert lines[0].startswith("ALARM: Edge paint room humidity is 3.0 %RH above normal")
    assert "since today 07:42 (2 h 0 min)" in lines[0]
    assert "What to do: check the dehumidifier and that the doors are shut." in lines[0]
    assert "Lots made meanwhile: LOT-2411-B." in lines[0]
    # Then for engineers, the context, the incident and how to acknowledge, in that order.
    order = [
        "Production meanwhile: lot LOT-2411-B",
        "For engineers: baseline_shift alarm: "
        "ALARM: Edge paint room humidity is now at 53.1 %RH (24 h average)",
        "Incident: 20261117-0001 (opened; channel edge_paint.humidity, zone edge_paint)",
        "To acknowledge",
        f'driftgate alerts ack 20261117-0001 --by "your name" --state-dir {tmp_path}',
        'publish {"by": "your name"} to driftgate/atelier-nord/gw1/incidents/20261117-0001/ack',
    ]
    places = [text.index(part) for part in order]
    assert places == sorted(places)
    html = mail.html()
    assert "<h3>ALARM: Edge paint room humidity (opened)</h3>" in html
    assert "<code>driftgate alerts ack 20261117-0001 --by &quot;your name&quot;" in html


def test_the_example_mail_in_docs_alerts_md_is_what_the_code_writes(tmp_path: Path) -> None:
    """docs/alerts.md shows a real mail: this test makes it, from the manager's notices."""
    cfg = agent_config(tmp_path, notify(25), mqtt={"host": "127.0.0.1"})
    notices = Notices(cfg)
    notices.lot("edge_paint", "LOT-2411-B")
    first = notices.event("edge_paint.humidity", Level.ALARM, value=53.1, baseline=50.1)
    notices.now += 40 * 10**9
    second = notices.event(
        "cutting.humidity", Level.WARN, value=47.2, baseline=45.4, minutes_since=95
    )
    target = the_email(cfg)
    target.origin = Origin("atelier-nord", "gw1", "/var/lib/driftgate", mqtt=True)
    msg = target.compose([delivery(first), delivery(second)])
    made = f"Subject: {msg['Subject']}\nTo: {msg['To']}\n\n" + str(
        msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    )
    doc = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    shown = re.search(
        r"<!-- example mail: tests/test_notify_email.py -->\n```text\n(.*?)```", doc, re.S
    )
    assert shown is not None, "docs/alerts.md lost its example mail"
    assert shown.group(1) == made, f"update the example mail in docs/alerts.md to:\n{made}"


# ---------------------------------------------------------------------------------- batching


async def test_three_incidents_opened_within_the_window_arrive_as_one_mail(
    tmp_path: Path,
) -> None:
    offset = [0]  # the target's clock against the wall clock: the test moves it, never sleeps
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port, batch_window="60s"))
        email = Recording(the_email(cfg, clock=lambda: time.time_ns() + offset[0]))
        notices = Notices(cfg)
        all_held = lambda n: lambda r: len(r) == n and all(isinstance(e, NotYet) for e in r)  # noqa: E731
        async with Running(cfg, [email]) as running:
            for n, name in enumerate(
                ["edge_paint.humidity", "cutting.humidity", "sewing.m05.tension"], start=1
            ):
                running.tell(notices.event(name, Level.WARN, value=60, baseline=50))
                await email.until(all_held(n))
                offset[0] += 20 * 10**9  # the next one 20 s later
            assert smtp.mails == []  # held until 60 s after the first
            running.poke()
            await running.until_sent(3)
            # A fourth, after the mail went: a window of its own.
            offset[0] = 0
            running.tell(notices.event("edge_paint.humidity", Level.ALARM, value=70, baseline=50))
            await email.until(all_held(1))
            offset[0] += 61 * 10**9
            running.poke()
            await running.until_sent(4)

    first, second = smtp.mails
    assert first.subject == (
        "WARNING: 3 incidents: Edge paint room humidity (opened), Cutting room humidity "
        "(opened) and 1 more — atelier-nord/gw1"
    )
    text = first.text()
    assert text.startswith("3 notices from driftgate on atelier-nord/gw1:")
    for n, label in enumerate(
        ["Edge paint room humidity", "Cutting room humidity", "Sewing machine M05 thread tension"],
        start=1,
    ):
        assert f"{n}. WARNING: {label} (opened)" in text
    assert len(first.notice_keys()) == 3
    assert second.subject == "ALARM: Edge paint room humidity (escalated) — atelier-nord/gw1"


async def test_a_held_mail_leaves_by_itself_when_its_window_closes(tmp_path: Path) -> None:
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port, batch_window="300ms"))
        email = Recording(the_email(cfg))
        async with Running(cfg, [email]) as running:
            running.tell(Notices(cfg).event("cutting.humidity", Level.WARN, value=50, baseline=45))
            await running.until_sent(1)
    assert isinstance(email.rounds[0][0], NotYet)  # held first, then sent without a poke
    assert len(smtp.mails) == 1


async def test_a_batch_survives_a_restart_of_the_agent(tmp_path: Path) -> None:
    offset = [0]
    clock = lambda: time.time_ns() + offset[0]  # noqa: E731
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port, batch_window="60s"))
        notices = Notices(cfg)
        email = Recording(the_email(cfg, clock=clock))
        async with Running(cfg, [email]) as running:
            running.tell(notices.event("edge_paint.humidity", Level.WARN, value=60, baseline=50))
            running.tell(notices.event("cutting.humidity", Level.WARN, value=60, baseline=50))
            await email.until(lambda r: len(r) == 2 and all(isinstance(e, NotYet) for e in r))
        # The agent stops 30 s into the window and starts again: a new store, outbox and target.
        offset[0] += 30 * 10**9
        email = Recording(the_email(cfg, clock=clock))
        async with Running(cfg, [email]) as running:
            running.tell(notices.event("sewing.m05.tension", Level.WARN, value=60, baseline=50))
            await email.until(lambda r: len(r) == 3 and all(isinstance(e, NotYet) for e in r))
            assert smtp.mails == []
            offset[0] += 31 * 10**9
            running.poke()
            states = await running.until_sent(3)
    assert set(states.values()) == {"sent"}
    (mail,) = smtp.mails
    assert sorted(mail.notice_keys()) == sorted(states)


# ----------------------------------------------------------------------- login and encryption


async def test_login_over_starttls_with_a_private_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "smtp-password").write_text(PASSWORD + "\n")
    with MailServer(login=("driftgate", PASSWORD), starttls=(cert, key)) as smtp:
        good = {
            "starttls": True,
            "username": "driftgate",
            "ca_file": str(cert),
            "password_file": str(tmp_path / "smtp-password"),
        }
        cfg = agent_config(tmp_path, notify(smtp.port, **good))
        notice = Notices(cfg).event("cutting.humidity", Level.WARN, value=50, baseline=45)
        log = io.StringIO()
        configure_logging("debug", "json", stream=log)
        assert await the_email(cfg).send([delivery(notice)]) == [None]
        (mail,) = smtp.mails
        assert (mail.tls, mail.login) == (True, "driftgate")

        # A wrong password: refused, said so, the password nowhere.
        (tmp_path / "wrong").write_text("not-it")
        wrong = agent_config(
            tmp_path, notify(smtp.port, **{**good, "password_file": str(tmp_path / "wrong")})
        )
        (error,) = await the_email(wrong).send([delivery(notice)])
        assert isinstance(error, EmailError)
        assert "refused the login of 'driftgate'" in str(error)
        assert "not-it" not in str(error)

        # The server's certificate not trusted (no ca_file): said what to do.
        untrusted = agent_config(tmp_path, notify(smtp.port, **{**good, "ca_file": None}))
        (error,) = await the_email(untrusted).send([delivery(notice)])
        assert isinstance(error, EmailError)
        assert "TLS certificate is not trusted" in str(error)
        assert "ca_file" in str(error)

        # Without STARTTLS the server refuses to go on: it requires it.
        plain = agent_config(tmp_path, notify(smtp.port, **{**good, "starttls": False}))
        (error,) = await the_email(plain).send([delivery(notice)])
        assert isinstance(error, EmailError)
        assert len(smtp.mails) == 1
    assert PASSWORD not in log.getvalue()


async def test_a_server_without_starttls_is_not_sent_to_in_clear(tmp_path: Path) -> None:
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port, starttls=True))
        notice = Notices(cfg).event("cutting.humidity", Level.WARN, value=50, baseline=45)
        (error,) = await the_email(cfg).send([delivery(notice)])
        assert isinstance(error, EmailError)
        assert "offers no STARTTLS" in str(error)
        assert smtp.mails == []


async def test_implicit_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with MailServer(implicit_tls=(cert, key)) as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port, tls=True, ca_file=str(cert)))
        notice = Notices(cfg).event("cutting.humidity", Level.WARN, value=50, baseline=45)
        assert await the_email(cfg).send([delivery(notice)]) == [None]
        (mail,) = smtp.mails
        assert mail.tls


# ------------------------------------------------------------------------ outage, recovery


async def test_a_server_away_then_refusing_then_back_every_notice_arrives_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    marie = "marie@atelier-nord.example"
    cfg = agent_config(
        tmp_path,
        {
            "targets": [email_target(port, batch_window="50ms")],
            "routes": [
                {"name": "supervisors", "to": ["email", f"email:{marie}"], "rate_limit": None},
                {"name": "quality", "to": ["email"], "rate_limit": None},
            ],
        },
    )
    notices = Notices(cfg)
    email = Recording(the_email(cfg))
    smtp = MailServer(port=port)
    async with Running(cfg, [email]) as running:
        for name in ("edge_paint.humidity", "cutting.humidity"):
            running.tell(notices.event(name, Level.WARN, value=60, baseline=50))
        # No server: connections refused, retried.
        failed = lambda r: any(isinstance(e, EmailError) for e in r)  # noqa: E731
        error = next(e for e in await email.until(failed) if isinstance(e, EmailError))
        assert "cannot reach SMTP server 127.0.0.1" in str(error)
        await email.until(failed)
        # The server is back but answers 451 to the next two mails; then takes them.
        smtp.refuse(2)
        smtp.start()
        try:
            running.tell(notices.event("edge_paint.humidity", Level.ALARM, value=70, baseline=50))
            states = await running.until_sent(9)  # 3 notices x (2 + 1 route entries)
        finally:
            smtp.stop()
    assert smtp.handler.refused == 2
    assert set(states.values()) == {"sent"}
    carried = [key for mail in smtp.mails for key in mail.notice_keys()]
    assert sorted(carried) == sorted(states)  # every delivery in exactly one mail
    by_recipient = {tuple(m.rcpt_tos) for m in smtp.mails}
    assert by_recipient == {(SUPERVISORS,), (marie,)}
    for mail in smtp.mails:
        # The same notice through two routes to one mailbox is told once in the mail.
        notices_in_it = {tuple(key.split(":")[:2]) for key in mail.notice_keys()}
        assert mail.text().count("\nIncident: ") == len(notices_in_it)


async def test_a_silent_server_times_out_and_the_rest_waits_in_order(tmp_path: Path) -> None:
    """A server that takes the connection and never answers: send() gives up after the
    timeout with a reason, and the deliveries after it are left for the next round."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = agent_config(tmp_path, notify(port, timeout="300ms"))
        notices = Notices(cfg)
        first = notices.event("edge_paint.humidity", Level.WARN, value=60, baseline=50)
        second = notices.event("cutting.humidity", Level.WARN, value=60, baseline=50)
        results = await the_email(cfg).send([delivery(first), delivery(second)])
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert accepted, "the target never connected"
    assert isinstance(results[0], EmailError)
    assert "did not answer within 0.3 s" in str(results[0])
    assert isinstance(results[1], NotTried)


# ---------------------------------------------------------------------- driftgate alerts test


def test_alerts_test_sends_a_marked_test_mail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "smtp-password").write_text(PASSWORD)
    with MailServer(login=("driftgate", PASSWORD), starttls=(cert, key)) as smtp:
        config = tmp_path / "agent.yaml"
        config.write_text(f"""\
site: atelier-nord
gateway: gw1
state_dir: {tmp_path / "state"}
notify:
  targets:
    - type: email
      name: email
      host: 127.0.0.1
      port: {smtp.port}
      ca_file: {cert}
      username: driftgate
      password_file: smtp-password
      sender: {SENDER}
      to: [{SUPERVISORS}]
  routes:
    - name: supervisors
      to: [email, "email:marie@atelier-nord.example"]
""")
        assert cli_main(["alerts", "test", "--route", "supervisors", "-c", str(config)]) == 0
        out = capsys.readouterr().out
        assert out == "sent to email\nsent to email:marie@atelier-nord.example\n"
        mails = smtp.mails
    assert [m.rcpt_tos for m in mails] == [[SUPERVISORS], ["marie@atelier-nord.example"]]
    assert mails[0].subject == "WARNING: TEST of route supervisors (opened) — atelier-nord/gw1"
    assert (
        mails[0]
        .text()
        .startswith("TEST from driftgate on atelier-nord/gw1: route supervisors works.")
    )

    # The server gone: the command says so, and what to check, and fails.
    assert cli_main(["alerts", "test", "--route", "supervisors", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED email: cannot reach SMTP server 127.0.0.1")
    assert "check the target's host and port" in out
    assert PASSWORD not in out


def test_make_target_builds_an_email_target(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, notify(25))
    target = make_target(cfg.notify.targets[0], origin_of(cfg))
    assert isinstance(target, Email)
    assert target.name == "email"


# ------------------------------------------------------------------- the documented examples


def _check_notify(path: Path) -> None:
    cfg = load_config(path, env={"DRIFTGATE_INFLUX_PASSWORD": "x"})
    (email,) = [t for t in cfg.notify.targets if isinstance(t, EmailTarget)]
    assert email.password is not None
    assert email.password.get_secret_value() == SMTP_PASSWORD
    assert "apprise" in {t.type for t in cfg.notify.targets}
    assert len(cfg.notify.routes) == 3
    assert cfg.timezone == "Europe/Paris"


def test_the_commented_notify_example_in_agent_example_yaml_loads(tmp_path: Path) -> None:
    text = uncomment_notify(EXAMPLE.read_text(encoding="utf-8"))
    text = text.replace("  password_file: /etc/driftgate/influx-password\n", "")
    path = tmp_path / "agent.yaml"
    path.write_text(with_local_files(text, tmp_path))
    _check_notify(path)


def test_the_worked_notify_example_in_configure_md_loads(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "configure.md").read_text(encoding="utf-8")
    section = text.split("A worked example:", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "agent.yaml"
    path.write_text("site: s\ngateway: g\n" + with_local_files(example.group(1), tmp_path))
    _check_notify(path)


async def test_a_notice_that_cannot_become_a_mail_fails_alone(tmp_path: Path) -> None:
    """A label with a line break still makes a one-line subject; a delivery for default
    recipients the config no longer has fails with what to do, and the next mail goes."""
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, notify(smtp.port))
        notices = Notices(cfg)
        first = delivery(notices.event("cutting.humidity", Level.WARN, value=50, baseline=45))
        first.body["label"] = "Cutting room\nhumidity"
        second = delivery(notices.event("edge_paint.humidity", Level.WARN, value=60, baseline=50),
                          recipient="marie@atelier-nord.example")  # fmt: skip
        target = the_email(cfg)
        target.cfg = target.cfg.model_copy(update={"to": []})
        first_result, second_result = await target.send([first, second])
        assert isinstance(first_result, EmailError)
        assert "no recipients: give target 'email' `to:` addresses again" in str(first_result)
        assert second_result is None
        target.cfg = target.cfg.model_copy(update={"to": [SUPERVISORS]})
        assert await target.send([first]) == [None]
        subjects = [m.subject for m in smtp.mails]
    assert subjects == [
        "WARNING: Edge paint room humidity (opened) — atelier-nord/gw1",
        "WARNING: Cutting room humidity (opened) — atelier-nord/gw1",
    ]
