//! Reading published audit checkpoints for `keypost audit verify --against`: a mirror's file,
//! or the `/realms/{realm}/audit-checkpoints` URL of this or another Keypost (every page).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use store::chain::Checkpoint;

/// Largest document read (a page of a thousand checkpoints is about 400 KB).
const MAX_DOCUMENT: usize = 16 * 1024 * 1024;
/// Most pages fetched from one URL.
const MAX_PAGES: usize = 100_000;

/// The checkpoints `source` holds: an `http://` URL (paged), or a file.
pub(crate) fn read(source: &str) -> Result<Vec<Checkpoint>> {
    if source.starts_with("http://") {
        return fetch(source);
    }
    if source.contains("://") {
        bail!("--against {source:?}: only http:// URLs are fetched (save an https page to a file)");
    }
    let meta = std::fs::metadata(source).with_context(|| format!("reading {source}"))?;
    if meta.len() > MAX_DOCUMENT as u64 {
        bail!("{source} is larger than {MAX_DOCUMENT} bytes");
    }
    let text = std::fs::read(source).with_context(|| format!("reading {source}"))?;
    parse(&text, source).map(|(c, _)| c)
}

fn parse(bytes: &[u8], source: &str) -> Result<(Vec<Checkpoint>, Option<u64>)> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{source} is not JSON"))?;
    audit::published::from_json(&v).map_err(|why| anyhow::anyhow!("{source}: {why}"))
}

fn fetch(url: &str) -> Result<Vec<Checkpoint>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    runtime.block_on(async {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut out = Vec::new();
        let mut after = 0u64;
        for _ in 0..MAX_PAGES {
            let sep = if url.contains('?') { '&' } else { '?' };
            let page_url = format!("{url}{sep}after={after}");
            let uri: hyper::Uri = page_url
                .parse()
                .with_context(|| format!("{page_url:?} is not a URL"))?;
            let response = tokio::time::timeout(Duration::from_secs(30), client.get(uri))
                .await
                .with_context(|| format!("{page_url}: no answer within 30 s"))?
                .with_context(|| format!("fetching {page_url}"))?;
            if !response.status().is_success() {
                bail!("{page_url} answered {}", response.status());
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading {page_url}: {e}"))?
                .to_bytes();
            let (page, next) = parse(&body, &page_url)?;
            out.extend(page);
            match next {
                Some(n) if n > after => after = n,
                _ => return Ok(out),
            }
        }
        bail!("{url}: more than {MAX_PAGES} pages")
    })
}
