"""`keypost mail import` puts existing mail into an account: files written by Python's own
`mailbox` module (a real Maildir and a real mbox) and a plain .eml, idempotently, audited."""

import mailbox
from email.message import EmailMessage

import pytest

from conftest import CliError


def message(n: int, reply_to: int | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Bob <bob@fabrikam.test>"
    m["To"] = "alice@contoso.test"
    m["Subject"] = f"Message {n}"
    m["Message-ID"] = f"<{n}@fabrikam.test>"
    if reply_to:
        m["In-Reply-To"] = f"<{reply_to}@fabrikam.test>"
    m.set_content(f"From the body of message {n}.\nSecond line.\n")
    return m


def test_import_maildir_mbox_and_eml(keypost, world, tmp_path):
    md = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for n in (1, 2):
        md.add(mailbox.MaildirMessage(message(n)))
    mb = mailbox.mbox(tmp_path / "archive.mbox", create=True)
    for n in (3, 4, 5):
        mb.add(message(n, reply_to=n - 1))
    mb.flush()
    (tmp_path / "single.eml").write_bytes(message(6).as_bytes())

    email = world.alice.email
    got = keypost.cli("mail", "import", email, str(tmp_path / "Maildir"), json=True)
    assert (got["source"], got["imported"], got["duplicates"], got["failed"]) == ("maildir", 2, 0, [])
    got = keypost.cli("mail", "import", email, str(tmp_path / "archive.mbox"), "--mailbox", "archive", json=True)
    assert (got["source"], got["imported"], got["mailbox"]) == ("mbox", 3, "Archive")
    got = keypost.cli("mail", "import", email, str(tmp_path / "single.eml"), json=True)
    assert (got["source"], got["imported"]) == ("eml", 1)

    again = keypost.cli("mail", "import", email, str(tmp_path / "archive.mbox"), "--mailbox", "archive", json=True)
    assert (again["imported"], again["duplicates"]) == (0, 3), "a second import adds nothing"

    records = keypost.audit("MailImported", realm="contoso")
    assert [r["details"]["imported"] for r in records][-4:] == [2, 3, 1, 0]
    assert all(r["actor"] == "cli" and r["target"] == email for r in records)


def test_import_errors_are_clear(keypost, world, tmp_path):
    with pytest.raises(CliError, match="nobody@contoso.test"):
        keypost.cli("mail", "import", "nobody@contoso.test", str(tmp_path))
    with pytest.raises(CliError, match="does-not-exist"):
        keypost.cli("mail", "import", world.alice.email, str(tmp_path / "does-not-exist.eml"))
    with pytest.raises(CliError, match="no mailbox"):
        keypost.cli("mail", "import", world.alice.email, str(tmp_path), "--mailbox", "spam-folder")
