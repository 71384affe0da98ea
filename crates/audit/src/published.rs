//! The published form of signed checkpoints: what `/realms/{realm}/audit-checkpoints` serves,
//! page by page, and what `keypost audit verify --against` reads back.
//!
//! Like a transparency log's signed tree heads, the checkpoints are worth most once someone
//! else holds a copy: an auditor or a second site that mirrors them can later prove that the
//! local log still contains every checkpoint it was shown (and so every record they cover),
//! whatever was done to the database since. Everything needed to check a checkpoint is in its
//! entry; the signed text is [`store::chain::checkpoint_message`] (docs/design/003).

use serde_json::{Value, json};
use store::Kid;
use store::chain::Checkpoint;

use crate::signed_heads::{hex, unhex};

/// Most checkpoints one page carries.
pub const PAGE_LIMIT: u64 = 1000;

/// One checkpoint as published.
pub fn to_json(c: &Checkpoint) -> Value {
    json!({
        "chain": c.chain,
        "number": c.number,
        "seq": c.seq,
        "link": hex(&c.link),
        "time": c.time,
        "prev": c.prev.as_ref().map(|p| hex(p)),
        "kid": c.kid.as_str(),
        "signature": hex(&c.signature),
    })
}

/// A page of published checkpoints: `{"checkpoints": [...], "next": N | null}`, where `next`
/// is the `after` of the following page.
pub fn page(realm: &str, checkpoints: &[Checkpoint], more: bool) -> Value {
    let next = more.then(|| checkpoints.last().map(|c| c.number));
    json!({
        "realm": realm,
        "checkpoints": checkpoints.iter().map(to_json).collect::<Vec<_>>(),
        "next": next.flatten(),
    })
}

/// Reads published checkpoints back: a page as [`page`] writes it, or a plain array of
/// entries (a mirror's own file). Entries that do not decode are an error, not skipped: a
/// mirror that cannot be read proves nothing.
pub fn from_json(v: &Value) -> Result<(Vec<Checkpoint>, Option<u64>), String> {
    let (entries, next) = match v {
        Value::Array(a) => (a, None),
        Value::Object(o) => (
            o.get("checkpoints")
                .and_then(Value::as_array)
                .ok_or("no \"checkpoints\" array")?,
            o.get("next").and_then(Value::as_u64),
        ),
        _ => return Err("not a JSON object or array".into()),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        out.push(entry(e).map_err(|why| format!("checkpoint {i}: {why}"))?);
    }
    Ok((out, next))
}

fn entry(e: &Value) -> Result<Checkpoint, String> {
    let text = |k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{k} missing"))
    };
    let number = |k: &str| {
        e.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{k} missing"))
    };
    let signature = text("signature")?;
    if signature.len() % 2 != 0 || signature.len() > 1024 {
        return Err("signature malformed".into());
    }
    let signature = (0..signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(signature.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| "signature malformed")?;
    let prev = match e.get("prev") {
        None | Some(Value::Null) => None,
        Some(p) => Some(p.as_str().and_then(unhex).ok_or("prev malformed")?),
    };
    Ok(Checkpoint {
        chain: text("chain")?.to_owned(),
        number: number("number")?,
        prev,
        seq: number("seq")?,
        link: unhex(text("link")?).ok_or("link malformed")?.to_vec(),
        time: e
            .get("time")
            .and_then(Value::as_i64)
            .ok_or("time missing")?,
        kid: Kid::new(text("kid")?).map_err(|e| e.to_string())?,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_page_reads_back_as_it_was() {
        let c = Checkpoint {
            chain: "contoso".into(),
            number: 2,
            prev: Some([5u8; 32]),
            seq: 17,
            link: vec![3u8; 32],
            time: 1_800_000_000,
            kid: Kid::new("k1").unwrap(),
            signature: vec![1, 2, 0xff],
        };
        let legacy = Checkpoint {
            number: 1,
            prev: None,
            ..c.clone()
        };
        let page = page("contoso", &[legacy.clone(), c.clone()], true);
        assert_eq!(page["next"], 2);
        let (back, next) = from_json(&page).unwrap();
        assert_eq!((back, next), (vec![legacy, c], Some(2)));
        assert!(from_json(&json!({"checkpoints": [{"chain": "x"}]})).is_err());
        assert!(from_json(&json!("nope")).is_err());
    }
}
