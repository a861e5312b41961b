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
            use crate::util::FetchError;
            crate::util::fetch_text(&url, MAX_WSDL_BYTES, FETCH_TIMEOUT)
                .await
                .map_err(|e| match e {
                    FetchError::Transport(m) => m,
                    FetchError::Status(s) => format!("GET {url} answered {s}"),
                    FetchError::TooLarge => format!("larger than {MAX_WSDL_BYTES} bytes"),
                    FetchError::NotUtf8 => "the WSDL is not UTF-8".to_owned(),
                })
        })
    })
    .join()
    .map_err(|_| "fetching the WSDL failed".to_owned())?
}
