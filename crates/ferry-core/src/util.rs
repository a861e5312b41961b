//! Small shared helpers: time formatting, id generation, fetching a document by URL.

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses RFC 3339 or a whole number of milliseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A new run id: UUID v7, so ids sort by creation time.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Creates `path` with mode 0600 (it must not exist yet) and writes `content` durably.
pub fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// Why [`fetch_text`] failed.
#[derive(Debug)]
pub enum FetchError {
    /// No answer: the transport error with its causes.
    Transport(String),
    /// The server answered with a status that is not a success.
    Status(u16),
    /// The body is larger than the limit.
    TooLarge,
    NotUtf8,
}

/// GETs a document (an OpenAPI spec, a WSDL) as UTF-8 text of at most `max_bytes`, within
/// `timeout`. The limit is checked as the body arrives, not after.
pub async fn fetch_text(
    url: &str,
    max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<String, FetchError> {
    let transport = |e: reqwest::Error| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        FetchError::Transport(msg)
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(crate::step::USER_AGENT)
        .build()
        .map_err(transport)?;
    let mut resp = client.get(url).send().await.map_err(transport)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status().as_u16()));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if buf.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| FetchError::NotUtf8)
}
