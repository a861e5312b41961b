//! SOAP client support: WSDL 1.1 parsing ([`wsdl`]) and envelopes ([`envelope`]), shared by
//! the `soap` step and `ferry import wsdl`.
//!
//! Owns reading a WSDL from a file or a URL within a size limit. Does not send SOAP requests:
//! the step does, through `step::call`.

pub mod envelope;
pub mod wsdl;

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use wsdl::MAX_WSDL_BYTES;

/// How long fetching a WSDL by URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a WSDL file, refusing one larger than the limit.
pub fn read_file(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_WSDL_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() > MAX_WSDL_BYTES {
        return Err(format!("larger than {MAX_WSDL_BYTES} bytes"));
    }
    Ok(text)
}

/// Fetches a WSDL by URL, synchronously (flows load outside any request; this runs on a
/// thread of its own so it works inside and outside a Tokio runtime).
pub fn fetch(url: &str) -> Result<String, String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .user_agent(crate::step::USER_AGENT)
                .build()
                .map_err(|e| e.to_string())?;
            let mut resp = client.get(&url).send().await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            if !resp.status().is_success() {
                return Err(format!("GET {url} answered {}", resp.status().as_u16()));
            }
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                if buf.len() + chunk.len() > MAX_WSDL_BYTES {
                    return Err(format!("larger than {MAX_WSDL_BYTES} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            String::from_utf8(buf).map_err(|_| "the WSDL is not UTF-8".to_owned())
        })
    })
    .join()
    .map_err(|_| "fetching the WSDL failed".to_owned())?
}
