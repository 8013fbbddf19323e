"""``wearwatch users``: console accounts, managed while the console runs.

Accounts live on the compacted Kafka topic ``console.users`` (key = username, value =
:class:`~console.models.Account`), which every console replica follows: a change made here
reaches every replica within about a second, no restart. Each change is also appended to
the ``audit`` topic (actor ``cli:<operating-system user>``, or ``--actor``).

::

    wearwatch users add nurse.kim --role nurse --ward 3B [--ward 4A] --password-stdin
    wearwatch users list
    wearwatch users disable nurse.kim      # ends her sessions on every replica at once
    wearwatch users enable nurse.kim
    wearwatch users passwd nurse.kim --password-stdin   # also ends her sessions
    wearwatch users set-wards nurse.kim --ward 3B --ward 3C
    wearwatch users set-role nurse.kim --role charge_nurse

Passwords are read from standard input only (never from the command line, where other users
of the machine could see them), at least 12 characters, stored as argon2id hashes. There is
no default or built-in account: an installation starts with none.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from pydantic import ValidationError

from console.auth import check_password_policy, hash_password
from console.models import ROLES, Account, AuditRecord, valid_username
from console.topics import ensure_console_topics
from wearwatch.config import Settings, load_settings
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.transport import kafka_client_config, kafka_producer

__all__ = ["add_arguments", "apply_change", "read_accounts", "run"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def read_accounts(settings: Settings, timeout_s: float = 30.0) -> dict[str, Account]:
    """Every current account: ``console.users`` read from its start to its end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_client_config(settings), enable_auto_commit=False, group_id=None,
                             client_id="wearwatch-users")
    try:
        topic = settings.topic_console_users
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        accounts: dict[str, Account] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise StackUnavailable(f"could not read {topic} to its end within {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    name = (r.key or b"").decode(errors="replace")
                    if r.value is None:
                        accounts.pop(name, None)
                    else:
                        a = Account.model_validate_json(r.value)
                        accounts[a.username] = a
        return accounts
    finally:
        consumer.close()


def _write(settings: Settings, account: Account, audit: AuditRecord) -> None:
    from kafka.errors import KafkaError

    producer = kafka_producer(settings, client_id="wearwatch-users")
    try:
        futures = [
            producer.send(settings.topic_console_users, key=account.username.encode(), value=account.to_json()),
            producer.send(settings.topic_audit, key=audit.record_key, value=audit.to_json()),
        ]
        producer.flush(30)
        for f in futures:
            f.get(timeout=30)
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka did not take the account change: {exc}") from exc
    finally:
        producer.close(10)


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    try:
        check_password_policy(password)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return password


def apply_change(settings: Settings, action: str, username: str, *, actor: str, role: str | None = None,
                 wards: list[str] | None = None, password: str | None = None) -> Account:
    """Make one account change (``add``, ``disable``, ``enable``, ``passwd``, ``set-wards``, ``set-role``),
    write it and its audit record to Kafka, and return the new account. Raises ConfigError for a
    change that cannot be made (unknown user, existing user, bad ward or password)."""
    if not valid_username(username):
        raise ConfigError(f"username {username!r}: 1-64 lower-case characters of [a-z0-9_.@-], starting with a "
                          "letter or digit")
    ensure_console_topics(settings)
    accounts = read_accounts(settings)
    now = _now_ms()
    old = accounts.get(username)
    detail: dict[str, Any] = {"username": username}
    try:
        if action == "add":
            if old is not None:
                raise ConfigError(f"account {username} exists (use set-role, set-wards, passwd or enable)")
            assert role is not None and wards and password is not None
            new = Account(username=username, role=role, wards=tuple(wards),  # type: ignore[arg-type]
                          password_hash=hash_password(password), created_ms=now, updated_ms=now)
            detail.update(role=role, wards=list(new.wards))
        else:
            if old is None:
                raise ConfigError(f"no account {username}")
            if action == "disable":
                new = old.model_copy(update={"disabled": True, "sessions_valid_after_ms": now, "updated_ms": now})
            elif action == "enable":
                new = old.model_copy(update={"disabled": False, "updated_ms": now})
            elif action == "passwd":
                assert password is not None
                new = old.model_copy(update={"password_hash": hash_password(password), "sessions_valid_after_ms": now,
                                             "updated_ms": now})
            elif action == "set-wards":
                assert wards
                new = Account.model_validate({**old.model_dump(), "wards": tuple(wards), "updated_ms": now})
                detail.update(wards=list(new.wards), before=list(old.wards))
            elif action == "set-role":
                new = Account.model_validate({**old.model_dump(), "role": role, "updated_ms": now})
                detail.update(role=role, before=old.role)
            else:
                raise ConfigError(f"unknown action {action}")
    except ValidationError as exc:  # a bad ward or role
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    audit = AuditRecord(ts_ms=now, actor=actor, action=f"user_{action.replace('-', '_')}",  # type: ignore[arg-type]
                        detail=detail)
    _write(settings, new, audit)
    return new


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who makes the change, for the audit trail (default: cli:<login name>)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("add", help="create an account (password from standard input)")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--ward", action="append", required=True, help="a ward the account sees (repeat for several)")
    p.add_argument("--password-stdin", action="store_true", required=True, help="read the password from stdin")
    sub.add_parser("list", help="list the accounts")
    for name, text in (("disable", "lock an account out (its sessions end at once)"), ("enable", "unlock it")):
        sub.add_parser(name, help=text).add_argument("username")
    p = sub.add_parser("passwd", help="set a new password (from stdin); ends the account's sessions")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", required=True)
    p = sub.add_parser("set-wards", help="replace the account's wards")
    p.add_argument("username")
    p.add_argument("--ward", action="append", required=True)
    p = sub.add_parser("set-role", help="change the account's role")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES, required=True)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.action == "list":
        accounts = read_accounts(settings)
        print(f"{'username':<24}{'role':<14}{'status':<10}{'updated (UTC)':<22}wards")
        for a in sorted(accounts.values(), key=lambda a: a.username):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.updated_ms / 1000))
            print(f"{a.username:<24}{a.role:<14}{'disabled' if a.disabled else 'enabled':<10}{stamp:<22}"
                  f"{','.join(a.wards)}")
        print(f"{len(accounts)} account(s)")
        return 0
    actor = args.actor or f"cli:{getpass.getuser()}"
    password = _read_password() if getattr(args, "password_stdin", False) else None
    new = apply_change(settings, args.action, args.username.strip(), actor=actor, role=getattr(args, "role", None),
                       wards=getattr(args, "ward", None), password=password)
    state = "disabled" if new.disabled else "enabled"
    print(f"{args.action}: {new.username} ({new.role}, wards {','.join(new.wards)}, {state})")
    return 0
