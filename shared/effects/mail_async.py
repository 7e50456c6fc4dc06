"""A mail effect over asyncio SMTP (aiosmtplib): TLS or STARTTLS, authentication, and conversation threading.

Like ``send_mail`` it carries the idempotency key as the Message-ID (``<sha256(key)@vigil>``),
the same on every attempt; in addition a payload may name the message it answers
(``In-Reply-To``) and the conversation it belongs to (``References``), so that every notice
about one incident lands in one thread in the recipient's mail client. Credentials are the
factory's arguments, never the payload's.
"""

from __future__ import annotations

import email.policy
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from pydantic import Field, SecretStr

from shared.effects.builtin import EffectPayload, _failure, _parse
from shared.effects.domain import Effect, PermanentEffectError, TransientEffectError, classify_smtp_code, message_id
from shared.effects.runner import EffectKind, OutcomeHandler

MESSAGE_ID_PATTERN = r"^<[^<>\s]+@[^<>\s]+>$"


class ThreadedMail(EffectPayload):
    """Payload of ``smtp_mail``; enqueue it with the recipient's mailbox as the target."""

    to: list[str] = Field(min_length=1)
    subject: str
    body: str
    in_reply_to: str | None = Field(None, pattern=MESSAGE_ID_PATTERN, description="The Message-ID this answers.")
    references: list[str] = Field(
        default_factory=list, description="Message-IDs of the conversation, oldest first (RFC 5322 References)."
    )


def build_message(mail: ThreadedMail, *, key: str, sender: str, now: datetime) -> EmailMessage:
    """The message for one attempt: its Message-ID derived from the key, its thread from the payload."""
    # No folding below the RFC 5322 line limit: the message ids must reach the mail store whole.
    message = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject
    message["Message-ID"] = message_id(key)
    message["Date"] = format_datetime(now)
    if mail.in_reply_to is not None:
        message["In-Reply-To"] = mail.in_reply_to
    if mail.references:
        message["References"] = " ".join(mail.references)
    message.set_content(mail.body)
    return message


def smtp_mail(
    *,
    host: str,
    port: int = 587,
    sender: str,
    starttls: bool = True,
    use_tls: bool = False,
    username: str | None = None,
    password: SecretStr | None = None,
    cafile: Path | None = None,
    name: str = "smtp_mail",
    timeout_s: float = 30.0,
    max_attempts: int = 8,
    concurrency: int = 4,
    per_target_concurrency: int = 2,
    on_outcome: OutcomeHandler | None = None,
) -> EffectKind:
    """A mail through an SMTP server over asyncio, with ``Message-ID: <sha256(key)@vigil>`` on every attempt.

    ``use_tls`` speaks TLS from the first byte (port 465); ``starttls`` upgrades a plain
    connection and fails if the server cannot (never an opportunistic downgrade to plain text).
    Certificates are verified, against ``cafile`` when given (a private CA). A 4xx reply is retried,
    a 5xx (a refused login, an unknown mailbox) fails at once.
    """
    if starttls and use_tls:
        raise ValueError(f"{name}: starttls and use_tls exclude each other (STARTTLS upgrades a plain connection)")
    tls_context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)

    async def execute(effect: Effect) -> dict[str, Any]:
        mail: ThreadedMail = _parse(ThreadedMail, effect)
        message = build_message(mail, key=effect.key, sender=sender, now=datetime.now(UTC))
        try:
            refused, reply = await aiosmtplib.send(
                # Flattened here, by the message's own policy: aiosmtplib's would fold the long ids.
                message.as_bytes(),
                sender=sender,
                recipients=mail.to,
                hostname=host,
                port=port,
                use_tls=use_tls,
                start_tls=starttls,
                username=username,
                password=password.get_secret_value() if password is not None else None,
                tls_context=tls_context,
                timeout=timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = {refusal.recipient: refusal.code for refusal in exc.recipients}
            if all(classify_smtp_code(code) == "permanent" for code in codes.values()):
                raise PermanentEffectError(f"every recipient refused: {codes}", result={"refused": codes}) from exc
            raise TransientEffectError(f"recipients refused for now: {codes}", result={"refused": codes}) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _failure(classify_smtp_code(exc.code), f"SMTP {exc.code}: {exc.message}") from exc
        # Some recipients refused, the others took it: the mail went; a retry would not change that.
        return {
            "message_id": message["Message-ID"],
            "recipients": len(mail.to) - len(refused),
            "refused": {address: response.code for address, response in refused.items()},
            "reply": reply,
        }

    return EffectKind(
        name=name,
        execute=execute,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        concurrency=concurrency,
        per_target_concurrency=per_target_concurrency,
        on_outcome=on_outcome,
    )
