//! OpenAPI 3.0 and 3.1 documents (JSON or YAML): loading, `$ref` resolution, and the model
//! of operations that `ferry import openapi` lists and the `http` step's `operation:` uses.
//!
//! Owns reading a spec and answering "what does operation X take"; [`check`] owns the
//! compile-time checks of an `http` step against it. Does not send requests, and does not
//! validate the spec itself beyond what it needs (a spec that other tools accept with a
//! missing piece is read as far as it goes).
//!
//! The document is kept as JSON and `$ref`s are followed lazily ([`Spec::deref`]), so that
//! recursive schemas (a `Node` with `children: [Node]`) need no special case. External
//! references (`other.yaml#/components/schemas/X`, relative to the file that holds them) are
//! bundled at load: the other document is placed under `x-ferry-bundled` in the root and its
//! references rewritten, so every reference is local afterwards.
//!
//! Why not the `openapiv3` / `oas3` crates: each covers one of 3.0 and 3.1, and both
//! deserialize strictly, so one odd extension in a vendor's spec fails the whole import.

pub mod check;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

/// HTTP methods an OpenAPI path item may hold, in the order operations are listed.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// How deep `$ref` chains and schema walks may go: a cycle or a hostile spec stops here.
const MAX_DEPTH: usize = 64;

/// Largest spec read (a big public spec such as GitHub's is about 12 MB of JSON).
pub const MAX_SPEC_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenApiError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("`{path}` is not valid {format}: {message}")]
    Parse {
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("`{0}` is Swagger 2.0; only OpenAPI 3.0 and 3.1 are supported")]
    Swagger2(String),
    #[error("`{0}` is not an OpenAPI document (no `openapi: 3.x` at the top)")]
    NotOpenApi(String),
    #[error("unsupported OpenAPI version `{version}` in `{path}`; expected 3.0 or 3.1")]
    Version { path: String, version: String },
    #[error("unresolvable reference `{0}`")]
    Ref(String),
    #[error(
        "reference `{0}` leaves the spec's folder; a spec may refer only to files beside or below it"
    )]
    OutsideFolder(String),
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    Path,
    Query,
    Header,
    Cookie,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: ParamIn,
    pub required: bool,
    /// The parameter's schema, references not yet followed.
    pub schema: Option<Json>,
}

#[derive(Debug, Clone)]
pub struct RequestBody {
    pub required: bool,
    /// The media types the operation accepts, as written.
    pub media_types: Vec<String>,
    /// The schema of the JSON media type (`application/json` or `…+json`), if any.
    pub json_schema: Option<Json>,
}

/// One operation: what an `http` step with `operation:` compiles to.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `operationId`, or a name derived from the method and path (see [`derived_id`]).
    pub id: String,
    /// True when `id` was derived, not written in the spec.
    pub derived: bool,
    /// Upper case: `GET`, `POST`, …
    pub method: String,
    /// The path template as written, e.g. `/contacts/{id}`.
    pub path: String,
    pub summary: Option<String>,
    /// Path-level and operation-level parameters merged (the operation's win).
    pub params: Vec<Param>,
    pub body: Option<RequestBody>,
}

impl Operation {
    pub fn params_in(&self, location: ParamIn) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(move |p| p.location == location)
    }

    /// Names of the `{placeholders}` of the path template, in order.
    pub fn path_names(&self) -> Vec<&str> {
        path_placeholders(&self.path)
    }
}

/// A security scheme from `components.securitySchemes`, reduced to what a connection's
/// `auth:` can express.
#[derive(Debug, Clone, PartialEq)]
pub enum SecurityScheme {
    Bearer,
    Basic,
    /// An API key in a header or a query parameter (`name` is the header or parameter).
    ApiKey {
        name: String,
        location: String,
    },
    /// OAuth 2.0 with a token URL: client credentials when the spec offers that flow,
    /// else another flow (authorization code, password) whose refresh token Ferry can use.
    OAuth2 {
        token_url: String,
        client_credentials: bool,
        scopes: Vec<String>,
    },
    /// Something `auth:` cannot express (OpenID Connect discovery, digest, cookies, …).
    Other(String),
}

/// A loaded OpenAPI document.
pub struct Spec {
    /// The document, with external references bundled in.
    pub doc: Json,
    /// `3.0.3`, `3.1.0`, …
    pub version: String,
    pub title: String,
    pub api_version: String,
    pub operations: Vec<Operation>,
    /// From `components.securitySchemes`, by name (in name order: the document is read
    /// into `serde_json` maps, which sort their keys).
    pub security_schemes: Vec<(String, SecurityScheme)>,
    /// Names of the schemes the top-level `security` requires, in order.
    pub security: Vec<String>,
}

/// Short: a connection is logged with `{:?}`, and a spec can be megabytes.
impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("title", &self.title)
            .field("version", &self.version)
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

impl Spec {
    /// Reads a spec file; external references are resolved relative to it.
    pub fn load(path: &Path) -> Result<Spec, OpenApiError> {
        let doc = read_doc(path)?;
        let mut bundler = Bundler {
            folder: path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .and_then(|p| p.canonicalize().ok()),
            docs: HashMap::new(),
            bundled: Map::new(),
        };
        let root = path.to_path_buf();
        let mut doc = doc;
        bundler.rewrite(&mut doc, &root, None, 0)?;
        if !bundler.bundled.is_empty()
            && let Some(o) = doc.as_object_mut()
        {
            o.insert("x-ferry-bundled".into(), Json::Object(bundler.bundled));
        }
        Spec::from_doc(doc, &path.display().to_string())
    }

    /// Reads a spec from text (JSON when it starts with `{`, else YAML). External
    /// references are refused: there is no file to resolve them against.
    pub fn parse(text: &str, shown: &str) -> Result<Spec, OpenApiError> {
        let mut doc = parse_text(text, shown)?;
        let mut bundler = Bundler {
            folder: None,
            docs: HashMap::new(),
            bundled: Map::new(),
        };
        bundler.rewrite(&mut doc, Path::new(""), None, 0)?;
        Spec::from_doc(doc, shown)
    }

    fn from_doc(doc: Json, shown: &str) -> Result<Spec, OpenApiError> {
        if doc.get("swagger").is_some() {
            return Err(OpenApiError::Swagger2(shown.to_owned()));
        }
        let version = match doc.get("openapi") {
            Some(Json::String(v)) => v.clone(),
            _ => return Err(OpenApiError::NotOpenApi(shown.to_owned())),
        };
        if !(version.starts_with("3.0") || version.starts_with("3.1")) {
            return Err(OpenApiError::Version {
                path: shown.to_owned(),
                version,
            });
        }
        let info = doc.get("info");
        let text = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let mut spec = Spec {
            title: text("title"),
            api_version: text("version"),
            version,
            operations: Vec::new(),
            security_schemes: Vec::new(),
            security: Vec::new(),
            doc: Json::Null,
        };
        spec.operations = operations(&doc)?;
        spec.security_schemes = security_schemes(&doc);
        spec.security = doc
            .get("security")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_object)
            .flat_map(|o| o.keys().cloned())
            .collect();
        spec.doc = doc;
        Ok(spec)
    }

    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.id == id)
    }

    /// Follows `$ref` until a value that is not a reference.
    pub fn deref<'a>(&'a self, value: &'a Json) -> Result<&'a Json, OpenApiError> {
        deref_in(&self.doc, value)
    }

    /// The first server's URL with its variables replaced by their defaults; `None` when
    /// the spec has no server. May be relative (`/api/v1`): see [`Spec::base_url`].
    pub fn server_url(&self) -> Option<String> {
        server_url(&self.doc)
    }

    /// The base URL for a connection: the server URL, made absolute against `fetched_from`
    /// (the URL the spec was read from) when it is relative.
    pub fn base_url(&self, fetched_from: Option<&str>) -> Option<String> {
        let server = self.server_url()?;
        if let Ok(u) = url::Url::parse(&server) {
            return Some(u.to_string().trim_end_matches('/').to_owned());
        }
        let base = url::Url::parse(fetched_from?).ok()?;
        base.join(&server)
            .ok()
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
    }
}

fn deref_in<'a>(doc: &'a Json, mut value: &'a Json) -> Result<&'a Json, OpenApiError> {
    for _ in 0..MAX_DEPTH {
        match value.get("$ref").and_then(Json::as_str) {
            Some(r) => value = pointer(doc, r)?,
            None => return Ok(value),
        }
    }
    Err(OpenApiError::Ref(
        value
            .get("$ref")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned(),
    ))
}

fn pointer<'a>(doc: &'a Json, reference: &str) -> Result<&'a Json, OpenApiError> {
    let ptr = reference
        .strip_prefix('#')
        .ok_or_else(|| OpenApiError::Ref(reference.to_owned()))?;
    let ptr = percent_decode(ptr);
    doc.pointer(&ptr)
        .ok_or_else(|| OpenApiError::Ref(reference.to_owned()))
}

/// `%7B` → `{` in JSON pointers written inside URIs (`#/paths/~1users~1%7Bid%7D`).
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_doc(path: &Path) -> Result<Json, OpenApiError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| OpenApiError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if meta.len() > MAX_SPEC_BYTES as u64 {
        return Err(OpenApiError::Read {
            path: shown,
            message: format!("larger than {MAX_SPEC_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| OpenApiError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    parse_text(&text, &shown)
}

/// JSON when the text starts with `{`, else YAML (through the flow loader's parser, so the
/// same YAML 1.2 rules apply).
pub fn parse_text(text: &str, shown: &str) -> Result<Json, OpenApiError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| OpenApiError::Parse {
            path: shown.to_owned(),
            format: "JSON",
            message: e.to_string(),
        })
    } else {
        crate::flow::node::parse_yaml(text)
            .map(|n| n.to_json())
            .map_err(|e| OpenApiError::Parse {
                path: shown.to_owned(),
                format: "YAML",
                message: format!("line {}: {}", e.pos.line, e.message),
            })
    }
}

/// Rewrites external references into local ones under `#/x-ferry-bundled/<n>`.
struct Bundler {
    /// The root spec's folder (canonical): referenced files must lie below it, so a spec from
    /// elsewhere cannot pull any file of the machine into the project's copy.
    folder: Option<PathBuf>,
    /// Canonical file path → bundle key.
    docs: HashMap<PathBuf, String>,
    bundled: Map<String, Json>,
}

impl Bundler {
    /// `file` is the document `value` sits in; `prefix` is where that document sits in the
    /// bundle (`None` for the root).
    fn rewrite(
        &mut self,
        value: &mut Json,
        file: &Path,
        prefix: Option<&str>,
        depth: usize,
    ) -> Result<(), OpenApiError> {
        if depth > MAX_DEPTH * 4 {
            return Ok(());
        }
        match value {
            Json::Object(o) => {
                if let Some(Json::String(r)) = o.get_mut("$ref") {
                    if let Some(local) = r.strip_prefix('#') {
                        if let Some(p) = prefix {
                            *r = format!("#{p}{local}");
                        }
                    } else if !r.is_empty() {
                        let (target, fragment) = match r.split_once('#') {
                            Some((t, f)) => (t.to_owned(), f.to_owned()),
                            None => (r.clone(), String::new()),
                        };
                        if file.as_os_str().is_empty() || target.contains("://") {
                            return Err(OpenApiError::Ref(r.clone()));
                        }
                        let key = self.load(file, &target)?;
                        *r = format!("#/x-ferry-bundled/{key}{fragment}");
                    }
                }
                for v in o.values_mut() {
                    self.rewrite(v, file, prefix, depth + 1)?;
                }
            }
            Json::Array(items) => {
                for v in items {
                    self.rewrite(v, file, prefix, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn load(&mut self, from: &Path, target: &str) -> Result<String, OpenApiError> {
        let path = from.parent().unwrap_or(Path::new("")).join(target);
        let canonical = path.canonicalize().map_err(|e| OpenApiError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if !self
            .folder
            .as_ref()
            .is_some_and(|f| canonical.starts_with(f))
        {
            return Err(OpenApiError::OutsideFolder(target.to_owned()));
        }
        if let Some(key) = self.docs.get(&canonical) {
            return Ok(key.clone());
        }
        let key = self.docs.len().to_string();
        self.docs.insert(canonical.clone(), key.clone());
        let mut doc = read_doc(&canonical)?;
        let prefix = format!("/x-ferry-bundled/{key}");
        self.rewrite(&mut doc, &canonical, Some(&prefix), 0)?;
        self.bundled.insert(key.clone(), doc);
        Ok(key)
    }
}

fn operations(doc: &Json) -> Result<Vec<Operation>, OpenApiError> {
    let mut out: Vec<Operation> = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Json::as_object) else {
        return Ok(out);
    };
    for (path, item) in paths {
        let item = deref_in(doc, item)?;
        let shared = parameters(doc, item.get("parameters"))?;
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let mut params = shared.clone();
            for p in parameters(doc, op.get("parameters"))? {
                match params
                    .iter_mut()
                    .find(|q| q.name == p.name && q.location == p.location)
                {
                    Some(q) => *q = p,
                    None => params.push(p),
                }
            }
            let body = match op.get("requestBody") {
                Some(b) => Some(request_body(deref_in(doc, b)?)),
                None => None,
            };
            let (id, derived) = match op.get("operationId").and_then(Json::as_str) {
                Some(id) if !id.trim().is_empty() => (id.trim().to_owned(), false),
                _ => (derived_id(method, path), true),
            };
            out.push(Operation {
                id,
                derived,
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                summary: op.get("summary").and_then(Json::as_str).map(str::to_owned),
                params,
                body,
            });
        }
    }
    // A derived name may meet a written one (or another derived one): number the later ones
    // so every operation stays reachable.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for op in &mut out {
        let n = seen.entry(op.id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 && op.derived {
            op.id = format!("{}{}", op.id, n);
        }
    }
    Ok(out)
}

fn parameters(doc: &Json, list: Option<&Json>) -> Result<Vec<Param>, OpenApiError> {
    let mut out = Vec::new();
    for p in list.and_then(Json::as_array).into_iter().flatten() {
        let p = deref_in(doc, p)?;
        let (Some(name), Some(location)) = (
            p.get("name").and_then(Json::as_str),
            p.get("in").and_then(Json::as_str),
        ) else {
            continue;
        };
        let location = match location {
            "path" => ParamIn::Path,
            "query" => ParamIn::Query,
            "header" => ParamIn::Header,
            "cookie" => ParamIn::Cookie,
            _ => continue,
        };
        out.push(Param {
            name: name.to_owned(),
            location,
            // Path parameters are always required (OpenAPI 3 §4.8.12.1).
            required: location == ParamIn::Path
                || p.get("required").and_then(Json::as_bool).unwrap_or(false),
            schema: p.get("schema").cloned(),
        });
    }
    Ok(out)
}

fn request_body(b: &Json) -> RequestBody {
    let content = b.get("content").and_then(Json::as_object);
    let media_types: Vec<String> = content
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let json_schema = content.and_then(|c| {
        c.iter()
            .find(|(k, _)| is_json_media(k))
            .and_then(|(_, m)| m.get("schema").cloned())
    });
    RequestBody {
        required: b.get("required").and_then(Json::as_bool).unwrap_or(false),
        media_types,
        json_schema,
    }
}

fn is_json_media(m: &str) -> bool {
    let m = m
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    m == "application/json" || m.ends_with("+json") || m == "*/*"
}

/// The name of an operation without `operationId`: the method in lower case, then each
/// path segment capitalised, `{id}` written `ById`:
/// `GET /contacts/{id}/notes` → `getContactsByIdNotes`, `GET /` → `get`.
pub fn derived_id(method: &str, path: &str) -> String {
    let mut out = method.to_ascii_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let (by, name) = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(n) => ("By", n),
            None => ("", segment),
        };
        out.push_str(by);
        for word in name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.push_str(chars.as_str());
            }
        }
    }
    out
}

/// `{name}` placeholders of a path template.
pub fn path_placeholders(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(&rest[start + 1..start + len]);
        rest = &rest[start + len + 1..];
    }
    out
}

fn server_url(doc: &Json) -> Option<String> {
    let server = doc.get("servers")?.as_array()?.first()?;
    let mut url = server.get("url")?.as_str()?.to_owned();
    if let Some(vars) = server.get("variables").and_then(Json::as_object) {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Json::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    Some(url)
}

fn security_schemes(doc: &Json) -> Vec<(String, SecurityScheme)> {
    let Some(schemes) = doc
        .pointer("/components/securitySchemes")
        .and_then(Json::as_object)
    else {
        return Vec::new();
    };
    schemes
        .iter()
        .filter_map(|(name, s)| {
            let s = deref_in(doc, s).ok()?;
            let kind = s.get("type").and_then(Json::as_str).unwrap_or("");
            let scheme = match kind {
                "http" => match s
                    .get("scheme")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "bearer" => SecurityScheme::Bearer,
                    "basic" => SecurityScheme::Basic,
                    other => SecurityScheme::Other(format!("http `{other}`")),
                },
                "apiKey" => {
                    let location = s.get("in").and_then(Json::as_str).unwrap_or("");
                    let pname = s.get("name").and_then(Json::as_str).unwrap_or("");
                    if matches!(location, "header" | "query") && !pname.is_empty() {
                        SecurityScheme::ApiKey {
                            name: pname.to_owned(),
                            location: location.to_owned(),
                        }
                    } else {
                        SecurityScheme::Other(format!("apiKey in `{location}`"))
                    }
                }
                "oauth2" => {
                    let flows = s.get("flows");
                    let cc = flows.and_then(|f| f.get("clientCredentials"));
                    let other = flows
                        .and_then(|f| f.get("authorizationCode").or_else(|| f.get("password")));
                    match cc.or(other) {
                        Some(flow) => match flow.get("tokenUrl").and_then(Json::as_str) {
                            Some(token_url) => SecurityScheme::OAuth2 {
                                token_url: token_url.to_owned(),
                                client_credentials: cc.is_some(),
                                scopes: flow
                                    .get("scopes")
                                    .and_then(Json::as_object)
                                    .map(|o| o.keys().cloned().collect())
                                    .unwrap_or_default(),
                            },
                            None => SecurityScheme::Other("oauth2 without a token URL".into()),
                        },
                        None => SecurityScheme::Other("oauth2 implicit flow".into()),
                    }
                }
                other => SecurityScheme::Other(other.to_owned()),
            };
            Some((name.clone(), scheme))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openapi")
            .join(name)
    }

    #[test]
    fn a_3_1_yaml_spec_is_read_with_refs_servers_and_security() {
        let spec = Spec::load(&fixture("crm.yaml")).unwrap();
        assert_eq!(spec.version, "3.1.0");
        assert_eq!(spec.title, "Acme CRM");
        assert_eq!(
            spec.base_url(None).as_deref(),
            Some("https://eu.crm.example.com/api/v2")
        );
        let create = spec.operation("createContact").unwrap();
        assert_eq!(
            (create.method.as_str(), create.path.as_str()),
            ("POST", "/contacts")
        );
        let body = create.body.as_ref().unwrap();
        assert!(body.required);
        // `$ref` to components/requestBodies, then to components/schemas.
        let schema = spec.deref(body.json_schema.as_ref().unwrap()).unwrap();
        assert_eq!(schema["required"], serde_json::json!(["email"]));

        let get = spec.operation("getContact").unwrap();
        assert_eq!(get.path_names(), vec!["id"]);
        // The path-level `id` (a `$ref` to components/parameters) and the operation's own.
        let names: Vec<(&str, ParamIn, bool)> = get
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.location, p.required))
            .collect();
        assert_eq!(
            names,
            vec![
                ("id", ParamIn::Path, true),
                ("expand", ParamIn::Query, false)
            ]
        );
        // No operationId: a derived name.
        let notes = spec.operation("getContactsByIdNotes").unwrap();
        assert!(notes.derived);
        assert_eq!(
            spec.security_schemes,
            vec![
                (
                    "apiKey".to_owned(),
                    SecurityScheme::ApiKey {
                        name: "X-Api-Key".into(),
                        location: "header".into()
                    }
                ),
                ("bearerAuth".to_owned(), SecurityScheme::Bearer),
            ]
        );
        assert_eq!(spec.security, vec!["bearerAuth".to_owned()]);
    }

    #[test]
    fn a_3_0_json_spec_with_an_external_ref_is_bundled() {
        let spec = Spec::load(&fixture("billing.json")).unwrap();
        assert_eq!(spec.version, "3.0.3");
        let op = spec.operation("createInvoice").unwrap();
        let schema = spec
            .deref(op.body.as_ref().unwrap().json_schema.as_ref().unwrap())
            .unwrap();
        // Defined in common.yaml; its own `#/…` reference points inside that file.
        assert_eq!(schema["additionalProperties"], Json::Bool(false));
        let customer = spec.deref(&schema["properties"]["customer"]).unwrap();
        assert_eq!(customer["type"], "object");
        assert!(matches!(
            spec.security_schemes[0].1,
            SecurityScheme::OAuth2 {
                client_credentials: true,
                ..
            }
        ));
        // Server variables take their defaults; a relative server needs the fetch URL.
        assert_eq!(
            spec.base_url(None).as_deref(),
            Some("https://sandbox.billing.example.com/v1")
        );
    }

    #[test]
    fn references_may_not_leave_the_specs_folder() {
        let dir = tempfile::tempdir().unwrap();
        let specs = dir.path().join("specs");
        std::fs::create_dir_all(specs.join("parts")).unwrap();
        std::fs::write(dir.path().join("outside.yaml"), "secret: value\n").unwrap();
        std::fs::write(specs.join("parts/ok.yaml"), "type: string\n").unwrap();
        let spec = |r: &str| {
            format!(
                "openapi: 3.1.0\ninfo: {{ title: t, version: '1' }}\npaths:\n  /a:\n    get:\n      operationId: a\n      responses:\n        '200':\n          description: ok\n          content:\n            application/json:\n              schema: {{ $ref: '{r}' }}\n"
            )
        };
        let main = specs.join("main.yaml");
        std::fs::write(&main, spec("parts/ok.yaml")).unwrap();
        assert!(Spec::load(&main).is_ok());
        for r in ["../outside.yaml", "/etc/hostname"] {
            std::fs::write(&main, spec(r)).unwrap();
            match Spec::load(&main) {
                Err(OpenApiError::OutsideFolder(t)) => assert_eq!(t, r),
                other => panic!("{r}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_documents_get_one_clear_error() {
        let e = Spec::parse("swagger: '2.0'\ninfo: {title: x}\n", "s.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`s.yaml` is Swagger 2.0; only OpenAPI 3.0 and 3.1 are supported"
        );
        let e = Spec::parse("openapi: 2.5.0\n", "s.yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported OpenAPI version `2.5.0`"),
            "{e}"
        );
        let e = Spec::parse("{\"openapi\": ", "s.json").unwrap_err();
        assert!(
            e.to_string().starts_with("`s.json` is not valid JSON"),
            "{e}"
        );
        let e = Spec::parse("title: x\n", "s.yaml").unwrap_err();
        assert_eq!(e, OpenApiError::NotOpenApi("s.yaml".into()));
        // A reference cycle ends in an error, not a hang.
        let s = Spec::parse(
            "openapi: 3.1.0\npaths:\n  /a: { $ref: '#/paths/~1b' }\n  /b: { $ref: '#/paths/~1a' }\n",
            "s.yaml",
        )
        .unwrap_err();
        assert!(matches!(s, OpenApiError::Ref(_)), "{s}");
    }

    proptest::proptest! {
        // A spec is outside input: whatever it holds, reading it ends in a spec or an
        // error, never a panic or a hang (reference cycles included).
        #[test]
        fn any_text_is_read_without_panic(text in "\\PC{0,400}") {
            let _ = Spec::parse(&text, "s.yaml");
        }

        #[test]
        fn mutated_specs_are_read_without_panic(at in 0usize..4000, ch in proptest::char::any()) {
            let mut text = std::fs::read_to_string(fixture("crm.yaml")).unwrap();
            let at = at % text.len();
            if text.is_char_boundary(at) {
                text.insert(at, ch);
            }
            if let Ok(spec) = Spec::parse(&text, "s.yaml") {
                for op in &spec.operations {
                    if let Some(s) = op.body.as_ref().and_then(|b| b.json_schema.as_ref()) {
                        let _ = spec.deref(s);
                    }
                }
            }
        }
    }

    #[test]
    fn derived_names_read_like_operation_ids() {
        assert_eq!(
            derived_id("get", "/contacts/{id}/notes"),
            "getContactsByIdNotes"
        );
        assert_eq!(
            derived_id("delete", "/line-items/{item_id}"),
            "deleteLineItemsByItemId"
        );
        assert_eq!(derived_id("get", "/"), "get");
        assert_eq!(path_placeholders("/a/{x}/b/{y}"), vec!["x", "y"]);
    }
}
