//! `ApiError` → `application/problem+json` (RFC 9457). Client faults say what to fix; server
//! faults are logged and answered with an opaque 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A webhook request failed its `verify:` check; the text says which check.
    #[error("{0}")]
    VerificationFailed(String),
    #[error("{0}")]
    Forbidden(String),
    /// A webhook's `verify:` cannot run (its secret is not set, its JWKS is unreachable).
    #[error("this webhook cannot verify requests right now; retry later")]
    VerifierUnavailable,
    #[error("{0}")]
    NotFound(String),
    /// `allowed` is the `Allow` header's value; empty when the router sets that header
    /// itself (management API routes).
    #[error("method `{method}` is not allowed here; {}", allowed_text(allowed))]
    MethodNotAllowed { method: String, allowed: String },
    #[error("{0}")]
    Conflict(String),
    #[error("body larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    #[error("the store is not available")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

fn allowed_text(allowed: &str) -> String {
    match allowed {
        "" => "the `Allow` header lists the methods this route takes".into(),
        methods => format!("allowed: {methods}"),
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::VerificationFailed(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::VerifierUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::VerificationFailed(_) => "verification-failed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable => "unavailable",
            ApiError::VerifierUnavailable => "verification-unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::Overloaded,
            StoreError::Closed => ApiError::Unavailable,
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Db(m) => ApiError::Internal(m),
        }
    }
}

impl From<crate::access::Denied> for ApiError {
    fn from(e: crate::access::Denied) -> Self {
        match e {
            crate::access::Denied::Unauthenticated => ApiError::Unauthorized,
            f @ crate::access::Denied::Forbidden { .. } => ApiError::Forbidden(f.to_string()),
            crate::access::Denied::Store(s) => s.into(),
        }
    }
}

impl From<crate::access::AccessError> for ApiError {
    fn from(e: crate::access::AccessError) -> Self {
        match e {
            crate::access::AccessError::Invalid(m) => ApiError::BadRequest(m),
            crate::access::AccessError::Store(s) => s.into(),
        }
    }
}

impl From<crate::secret::SecretError> for ApiError {
    fn from(e: crate::secret::SecretError) -> Self {
        use crate::secret::SecretError as E;
        match e {
            E::Invalid(m) => ApiError::BadRequest(m),
            E::Missing(_) => ApiError::NotFound(e.to_string()),
            E::Key(m) => ApiError::Conflict(m),
            E::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body = json!({
            "type": format!("https://ferry.dev/problems/{}", self.slug()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut resp = (status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::MethodNotAllowed { allowed, .. } if !allowed.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    headers.insert(header::ALLOW, v);
                }
            }
            ApiError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
