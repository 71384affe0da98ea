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
/// Most checkpoints read from one source: a chain checkpointed every minute for ten years.
const MAX_CHECKPOINTS: usize = 6_000_000;
/// How long one page may take, head and body.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a whole URL may take, every page.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

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
    let (checkpoints, _) = parse(&text, source)?;
    if checkpoints.len() > MAX_CHECKPOINTS {
        bail!("{source} holds more than {MAX_CHECKPOINTS} checkpoints");
    }
    Ok(checkpoints)
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
    // The timer is made inside the runtime (a tokio timer needs one to exist).
    let fetched = runtime.block_on(async {
        tokio::time::timeout(FETCH_TIMEOUT, async {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut out = Vec::new();
            let mut after = 0u64;
            for _ in 0..MAX_PAGES {
                let sep = if url.contains('?') { '&' } else { '?' };
                let page_url = format!("{url}{sep}after={after}");
                let uri: hyper::Uri = page_url
                    .parse()
                    .with_context(|| format!("{page_url:?} is not a URL"))?;
                // The head and the whole body within the page's time: a mirror that trickles
                // its answer is given up on, not waited for.
                let body = tokio::time::timeout(PAGE_TIMEOUT, async {
                    let response = client
                        .get(uri)
                        .await
                        .with_context(|| format!("fetching {page_url}"))?;
                    if !response.status().is_success() {
                        bail!("{page_url} answered {}", response.status());
                    }
                    Ok(Limited::new(response.into_body(), MAX_DOCUMENT)
                        .collect()
                        .await
                        .map_err(|e| anyhow::anyhow!("reading {page_url}: {e}"))?
                        .to_bytes())
                })
                .await
                .with_context(|| format!("{page_url}: not read within {PAGE_TIMEOUT:?}"))??;
                let (page, next) = parse(&body, &page_url)?;
                out.extend(page);
                if out.len() > MAX_CHECKPOINTS {
                    bail!("{url} holds more than {MAX_CHECKPOINTS} checkpoints");
                }
                match next {
                    Some(n) if n > after => after = n,
                    _ => return Ok(out),
                }
            }
            bail!("{url}: more than {MAX_PAGES} pages")
        })
        .await
    });
    fetched.with_context(|| format!("{url}: not read within {FETCH_TIMEOUT:?}"))?
}
