//! What an `Email/query` asks for (RFC 8621 §4.4), independent of any backend: a filter tree,
//! a sort and thread collapsing. Backends compile it; the JMAP layer builds it from JSON.

use crate::{MailboxId, UnixTime};

/// A filter: a condition, or an operator over filters (RFC 8620 §5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailFilter {
    /// Every field that is set must match.
    Condition(Box<EmailCondition>),
    /// All of these match (an empty AND matches everything).
    And(Vec<EmailFilter>),
    /// At least one of these matches.
    Or(Vec<EmailFilter>),
    /// None of these matches.
    Not(Vec<EmailFilter>),
}

impl Default for EmailFilter {
    fn default() -> Self {
        Self::And(Vec::new())
    }
}

impl EmailFilter {
    /// A filter of one condition.
    pub fn condition(c: EmailCondition) -> Self {
        Self::Condition(Box::new(c))
    }

    /// Every condition in the tree, wherever it sits (for search-term highlighting).
    pub fn conditions(&self) -> Vec<&EmailCondition> {
        match self {
            Self::Condition(c) => vec![c],
            Self::And(fs) | Self::Or(fs) | Self::Not(fs) => {
                fs.iter().flat_map(EmailFilter::conditions).collect()
            }
        }
    }
}

/// One `FilterCondition`; unset fields do not constrain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailCondition {
    /// In this mailbox.
    pub in_mailbox: Option<MailboxId>,
    /// In some mailbox other than these.
    pub in_mailbox_other_than: Option<Vec<MailboxId>>,
    /// Received before this time.
    pub before: Option<UnixTime>,
    /// Received at or after this time.
    pub after: Option<UnixTime>,
    /// At least this many octets.
    pub min_size: Option<u64>,
    /// Fewer than this many octets.
    pub max_size: Option<u64>,
    /// Every email of its thread has this keyword.
    pub all_in_thread_have_keyword: Option<String>,
    /// Some email of its thread has this keyword.
    pub some_in_thread_have_keyword: Option<String>,
    /// No email of its thread has this keyword.
    pub none_in_thread_have_keyword: Option<String>,
    /// Has this keyword.
    pub has_keyword: Option<String>,
    /// Lacks this keyword.
    pub not_keyword: Option<String>,
    /// Has (or has not) an attachment.
    pub has_attachment: Option<bool>,
    /// These words anywhere (subject, addresses, body).
    pub text: Option<String>,
    /// These words in From.
    pub from: Option<String>,
    /// These words in To or Cc.
    pub to: Option<String>,
    /// This text in Cc.
    pub cc: Option<String>,
    /// These words in the subject.
    pub subject: Option<String>,
    /// These words in the body.
    pub body: Option<String>,
}

impl EmailCondition {
    /// The full-text fields of the condition, each with its index column ("" = any column).
    pub fn searches(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("", self.text.as_deref()),
            ("subject", self.subject.as_deref()),
            ("from_text", self.from.as_deref()),
            ("to_text", self.to.as_deref()),
            ("body", self.body.as_deref()),
        ]
    }
}

/// What emails are sorted by (RFC 8621 §4.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    /// Arrival time.
    ReceivedAt,
    /// The Date header (arrival time if absent).
    SentAt,
    /// Size in octets.
    Size,
    /// First From address: its name, else its address.
    From,
    /// First To address: its name, else its address.
    To,
    /// The subject without `Re:`/`Fwd:` prefixes, case-folded.
    Subject,
    /// Whether the email has this keyword.
    HasKeyword(String),
    /// Whether every email of its thread has this keyword.
    AllInThreadHaveKeyword(String),
    /// Whether some email of its thread has this keyword.
    SomeInThreadHaveKeyword(String),
}

/// One sort criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailSort {
    /// The property.
    pub key: SortKey,
    /// Smallest first.
    pub ascending: bool,
}

/// A whole query: which emails, in what order, one per thread or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailQuery {
    /// Which emails.
    pub filter: EmailFilter,
    /// In what order (empty = newest received first).
    pub sort: Vec<EmailSort>,
    /// Only the first email of each thread (in sort order).
    pub collapse_threads: bool,
}

impl Default for EmailQuery {
    fn default() -> Self {
        Self {
            filter: EmailFilter::default(),
            sort: vec![EmailSort {
                key: SortKey::ReceivedAt,
                ascending: false,
            }],
            collapse_threads: false,
        }
    }
}

impl EmailQuery {
    /// Emails matching `filter`, newest first.
    pub fn filtered(filter: EmailFilter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }
}

/// Which slice of a query's results to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPage {
    /// Skip this many.
    pub position: u64,
    /// Return at most this many.
    pub limit: u64,
    /// Also count all results (costs a second pass).
    pub count_total: bool,
}

impl QueryPage {
    /// Every result, uncounted.
    pub const ALL: Self = Self {
        position: 0,
        limit: u64::MAX,
        count_total: false,
    };
}

/// The subject a conversation is sorted by: leading `Re:`, `Fwd:`, `Fw:` (any case, repeated,
/// with `[tags]` between them) and a trailing `(fwd)` removed, whitespace collapsed, lowercased.
/// A simplification of RFC 5256 §2.1 "base subject".
pub fn base_subject(subject: &str) -> String {
    let mut s = subject
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    loop {
        let before = s.len();
        while s.ends_with("(fwd)") {
            s.truncate(s.len() - 5);
            s.truncate(s.trim_end().len());
        }
        if s.starts_with('[')
            && let Some(end) = s.find(']')
            && !s[end + 1..].trim().is_empty()
        {
            s = s[end + 1..].trim_start().to_owned();
        }
        for prefix in ["re", "fwd", "fw"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let rest = rest.trim_start();
                let rest = if rest.starts_with('[') {
                    rest.find(']').map_or(rest, |e| &rest[e + 1..])
                } else {
                    rest
                };
                if let Some(rest) = rest.strip_prefix(':') {
                    s = rest.trim_start().to_owned();
                    break;
                }
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::base_subject;

    #[test]
    fn base_subjects() {
        for (input, base) in [
            ("Hello", "hello"),
            ("Re: Hello", "hello"),
            ("RE: re: Fwd:  Hello  world", "hello world"),
            ("Re[2]: Hello", "hello"),
            ("[list] Re: Hello (fwd)", "hello"),
            ("Fw: Report (fwd) (fwd)", "report"),
            ("Regarding the plan", "regarding the plan"),
            ("[only a tag]", "[only a tag]"),
            ("", ""),
        ] {
            assert_eq!(base_subject(input), base, "{input:?}");
        }
    }
}
