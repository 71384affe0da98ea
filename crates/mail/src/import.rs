//! Importing existing mail: a single `.eml` file, a Maildir, or an mbox file. Each message is
//! delivered like any other (blob first, then metadata); importing the same source twice adds
//! nothing. A message that cannot be read is reported and skipped, never half-stored.

use std::path::{Path, PathBuf};

use store::{AccountId, MailboxId, UnixTime};

use crate::{Error, Mail, Result};

/// What an import found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Which kind of source it was.
    pub source: Option<ImportSource>,
    /// Messages stored.
    pub imported: u64,
    /// Messages the account already had.
    pub duplicates: u64,
    /// Messages skipped, with why.
    pub failed: Vec<(String, String)>,
}

/// The kinds of source `import` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportSource {
    /// One RFC 5322 message.
    Eml,
    /// A Maildir (`cur/`, `new/`).
    Maildir,
    /// An mbox file (mboxrd or mboxo).
    Mbox,
    /// A directory of `.eml` files.
    Directory,
}

impl ImportSource {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportSource::Eml => "eml",
            ImportSource::Maildir => "maildir",
            ImportSource::Mbox => "mbox",
            ImportSource::Directory => "directory",
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

/// JMAP keywords from Maildir info flags (`...:2,FRS`).
fn maildir_keywords(name: &str, in_new: bool) -> Vec<String> {
    let mut k = Vec::new();
    if let Some((_, flags)) = name.rsplit_once(":2,") {
        for (flag, kw) in [
            ('D', "$draft"),
            ('F', "$flagged"),
            ('R', "$answered"),
            ('S', "$seen"),
        ] {
            if flags.contains(flag) {
                k.push(kw.to_owned());
            }
        }
    }
    if in_new {
        k.retain(|x| x != "$seen");
    }
    k
}

/// Splits an mbox file into messages. A message starts at a line beginning `From ` (at the
/// start of the file or after a line break); mboxrd quoting (`>From `, `>>From `) loses one `>`.
pub(crate) fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let quoted = line.iter().take_while(|b| **b == b'>').count();
        if quoted > 0
            && line
                .get(quoted..)
                .is_some_and(|rest| rest.starts_with(b"From "))
        {
            m.extend_from_slice(line.get(1..).unwrap_or_default());
        } else {
            m.extend_from_slice(line);
        }
    }
    if let Some(m) = current {
        messages.push(m);
    }
    // The separator line break belongs to the format, not to the message.
    for m in &mut messages {
        if m.ends_with(b"\n\n") {
            m.pop();
        }
    }
    messages
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let p = entry.map_err(|e| io(dir, e))?.path();
        if p.is_file()
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

impl Mail {
    /// Imports `path` into `mailbox` of `account`: an `.eml` file, an mbox file, a Maildir, or
    /// a directory of `.eml` files.
    pub fn import(
        &self,
        account: &AccountId,
        path: &Path,
        mailbox: &MailboxId,
        now: UnixTime,
    ) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let one = |report: &mut ImportReport, what: String, raw: &[u8], keywords: Vec<String>| {
            // Migrated mail keeps its place in time: it arrived when its Date says (never in the
            // future), as Gmail's and Exchange's importers do.
            let received = crate::message::parse_raw(raw)
                .ok()
                .and_then(|m| m.date().map(|d| d.to_timestamp()))
                .filter(|t| (1..=now).contains(t))
                .unwrap_or(now);
            match self.deliver(account, raw, mailbox, keywords, received) {
                Ok(d) if d.duplicate => report.duplicates += 1,
                Ok(_) => report.imported += 1,
                Err(Error::NotAMessage(why)) => report.failed.push((what, why)),
                Err(e) => return Err(e),
            }
            Ok(())
        };
        if path.is_dir() {
            let (cur, new) = (path.join("cur"), path.join("new"));
            if cur.is_dir() || new.is_dir() {
                report.source = Some(ImportSource::Maildir);
                for (dir, in_new) in [(cur, false), (new, true)] {
                    if !dir.is_dir() {
                        continue;
                    }
                    for f in files_in(&dir)? {
                        let raw = std::fs::read(&f).map_err(|e| io(&f, e))?;
                        let name = f
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        one(
                            &mut report,
                            f.display().to_string(),
                            &raw,
                            maildir_keywords(&name, in_new),
                        )?;
                    }
                }
            } else {
                report.source = Some(ImportSource::Directory);
                for f in files_in(path)? {
                    let raw = std::fs::read(&f).map_err(|e| io(&f, e))?;
                    one(&mut report, f.display().to_string(), &raw, Vec::new())?;
                }
            }
            return Ok(report);
        }
        let data = std::fs::read(path).map_err(|e| io(path, e))?;
        if data.starts_with(b"From ") {
            report.source = Some(ImportSource::Mbox);
            for (i, m) in split_mbox(&data).iter().enumerate() {
                one(
                    &mut report,
                    format!("{} message {}", path.display(), i + 1),
                    m,
                    Vec::new(),
                )?;
            }
        } else {
            report.source = Some(ImportSource::Eml);
            one(&mut report, path.display().to_string(), &data, Vec::new())?;
        }
        Ok(report)
    }
}
