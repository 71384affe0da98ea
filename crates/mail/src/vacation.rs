//! Vacation responses (RFC 8621 §8, with RFC 3834's rules for automatic replies): at most one
//! reply per sender per period, never to automatic mail, mailing lists or bulk mail, never to
//! ourselves, and marked `Auto-Submitted: auto-replied` so other responders stay quiet too.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use mail_parser::MessageParser;
use store::{AccountId, UnixTime, Vacation};

use crate::{Mail, Result};

/// A sender gets the same vacation response at most once in this period (RFC 3834 §2
/// recommends no more than once every 7 days).
const REPLY_PERIOD: i64 = 7 * 86_400;

/// Whether a message is one an automatic reply must not answer.
fn is_automatic(raw: &[u8]) -> bool {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return true;
    };
    let header = |name: &str| msg.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    header("Auto-Submitted").is_some_and(|v| v != "no")
        || header("Precedence").is_some_and(|v| ["bulk", "list", "junk"].contains(&v.as_str()))
        || header("List-Id").is_some()
        || header("List-Unsubscribe").is_some()
}

impl Mail {
    /// The account's vacation response.
    pub fn vacation(&self, account: &AccountId) -> Result<Vacation> {
        Ok(self.store.get_vacation(account)?)
    }

    /// Replaces the account's vacation response (and lets every sender get it once again).
    pub fn set_vacation(&self, account: &AccountId, v: &Vacation) -> Result<()> {
        self.store.set_vacation(account, v)?;
        Ok(())
    }

    /// The automatic reply `account` (address `own_address`) owes `sender` for message `raw`,
    /// if any. Claims the sender's slot for the period, so concurrent deliveries reply once.
    pub fn vacation_reply(
        &self,
        account: &AccountId,
        own_address: &str,
        own_name: &str,
        sender: &str,
        raw: &[u8],
        now: UnixTime,
    ) -> Result<Option<Vec<u8>>> {
        let v = self.store.get_vacation(account)?;
        let in_window = v.from_date.is_none_or(|f| now >= f) && v.to_date.is_none_or(|t| now < t);
        if !v.enabled || !in_window || sender.eq_ignore_ascii_case(own_address) || is_automatic(raw)
        {
            return Ok(None);
        }
        if !self.store.claim_vacation_reply(
            account,
            &sender.to_ascii_lowercase(),
            now - REPLY_PERIOD,
            now,
        )? {
            return Ok(None);
        }
        let original = MessageParser::default().parse(raw);
        let subject = v.subject.clone().unwrap_or_else(|| {
            format!(
                "Auto: {}",
                original
                    .as_ref()
                    .and_then(|m| m.subject())
                    .unwrap_or("your message")
            )
        });
        let mut b = MessageBuilder::new()
            .from((own_name.to_owned(), own_address.to_owned()))
            .to(sender.to_owned())
            .subject(subject)
            .date(now)
            .header("Auto-Submitted", Raw::new("auto-replied"));
        if let Some(id) = original.as_ref().and_then(|m| m.message_id()) {
            b = b.in_reply_to(id.to_owned()).references(id.to_owned());
        }
        b = b.text_body(
            v.text_body
                .clone()
                .unwrap_or_else(|| "I am away and will read your message when I am back.".into()),
        );
        if let Some(html) = v.html_body.clone() {
            b = b.html_body(html);
        }
        let reply = b
            .write_to_vec()
            .map_err(|e| crate::Error::Invalid(format!("building the vacation reply: {e}")))?;
        Ok(Some(reply))
    }
}
