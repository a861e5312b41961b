//! `soap`: calls one operation of a WSDL-described SOAP service (1.1 or 1.2, document/literal
//! or rpc/literal).
//!
//! ```yaml
//! - id: stock
//!   soap:
//!     connection: warehouse
//!     wsdl: wsdl/warehouse.wsdl
//!     operation: GetStock
//!     body: { sku: '{{ .event.body.sku }}' }
//! ```
//!
//! The WSDL is read when the flow loads (a path relative to the project folder, or an http(s)
//! URL fetched then), so `ferry validate` checks the operation and the step knows the request
//! element, the SOAP version, the action and the response's schema types. The request is
//! `body` mapped to XML (the XML mapping of docs/xml.md) inside the operation's element, or
//! the flow's own `envelope` (a string template whose interpolated values are XML-escaped).
//! The result is `{"status", "headers", "body"}` with `body` = `{ResponseElement: value}`,
//! typed by the WSDL's schema. A SOAP Fault fails the attempt with kind `fault`: retried
//! when the code is `Server`/`Receiver`, not when it is `Client`/`Sender`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use jaq_json::Val;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as Json;

use super::call::{self, OutBody, Outbound, scalar_text};
use super::{CompileCx, ErrorKind, Step, StepCx, StepDef, StepError, StepOutput};
use crate::connection::{Connection, DEFAULT_MAX_RESPONSE_BYTES};
use crate::expr::{EvalError, Part, Template};
use crate::flow::model::ValueSource;
use crate::flow::node::{Node, Spanned, Value};
use crate::soap::envelope::{self, Answer, Request, UsernameToken};
use crate::soap::wsdl::{ElementDecl, Kind, SoapVersion, Style, TypeDef, Wsdl};
use crate::xml;

pub(super) const DEF: StepDef = StepDef {
    kind: "soap",
    summary: "call a SOAP operation described by a WSDL (1.1 / 1.2, document or rpc literal)",
    compile,
    schema: |g| g.subschema_for::<SoapConfig>(),
};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SoapConfig {
    /// The connection to call through. Its `base_url` is the service endpoint (the whole
    /// URL, nothing is appended) and its headers and `auth:` are sent. Without a connection
    /// the endpoint is the WSDL's `soap:address` and no credentials are sent.
    #[serde(default)]
    connection: Option<Spanned<String>>,
    /// The WSDL: a path relative to the project folder (`wsdl/warehouse.wsdl`), or an
    /// http(s) URL. Read when the flow loads.
    wsdl: Spanned<String>,
    /// The operation to call, as named in the WSDL (`GetStock`).
    operation: Spanned<String>,
    /// The content of the operation's request element, as JSON (template): child elements
    /// by name, `@name` for attributes, `#text` for text, a list for a repeated element.
    /// rpc style: one key per message part. Default: an empty element.
    #[serde(default)]
    body: Option<Node>,
    /// Instead of `body`: the whole SOAP envelope as an XML string (template). Values
    /// interpolated with `{{ }}` are XML-escaped.
    #[serde(default)]
    envelope: Option<Node>,
    /// Extra HTTP headers (templates). `SOAPAction` (1.1) and the content type are set from
    /// the WSDL.
    #[serde(default)]
    headers: Option<Node>,
    /// `"1.1"` or `"1.2"`: which of the WSDL's bindings to use (default: 1.1 when the WSDL
    /// has it, else 1.2).
    #[serde(default)]
    #[schemars(with = "Option<VersionSchema>")]
    soap_version: Option<Node>,
    /// A WS-Security UsernameToken header: `{ username, password, digest }`. `password` may
    /// be `{ env: NAME }` or `{ secret: NAME }`; `digest: true` sends PasswordDigest
    /// (Base64(SHA-1(nonce + created + password))) instead of the password (default false).
    #[serde(default)]
    ws_security: Option<WsSecurityConfig>,
    /// Largest response accepted, in bytes (default: the connection's, else 10 MiB).
    #[serde(default)]
    max_response_bytes: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WsSecurityConfig {
    /// The user name (a string, `{ env: NAME }` or `{ secret: NAME }`).
    username: ValueSource,
    /// The password (a string, `{ env: NAME }` or `{ secret: NAME }`); never stored: the
    /// run record shows `***`.
    password: ValueSource,
    /// Send `PasswordDigest` instead of `PasswordText` (default false).
    #[serde(default)]
    digest: bool,
}

/// `soap_version` as the schema describes it: `"1.1"` or `"1.2"`, quoted or not.
struct VersionSchema;

impl JsonSchema for VersionSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SoapVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "enum": ["1.1", "1.2", 1.1, 1.2] })
    }
}

enum Content {
    Body(Option<Template>),
    Envelope(Template),
}

struct Soap {
    connection: Option<Arc<Connection>>,
    wsdl: Arc<Wsdl>,
    operation: String,
    version: SoapVersion,
    style: Style,
    action: Option<String>,
    /// The WSDL's endpoint, used without a connection.
    address: Option<String>,
    rpc_namespace: Option<String>,
    input: ElementDecl,
    output: ElementDecl,
    content: Content,
    headers: Option<Template>,
    security: Option<WsSecurityConfig>,
    max_response_bytes: u64,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let c: SoapConfig = cx.parse(node)?;
    let connection = match &c.connection {
        Some(name) => Some(cx.connection(name)?),
        None => None,
    };
    if let (Some(_), Some(e)) = (&c.body, &c.envelope) {
        cx.error(
            e.pos,
            "`body` and `envelope` exclude each other",
            Some(
                "give the request element's content in `body`, or the whole envelope in `envelope`"
                    .into(),
            ),
        );
        return None;
    }
    let version = match &c.soap_version {
        None => None,
        Some(v) => match scalar_text(&v.to_json()).trim() {
            "1.1" => Some(SoapVersion::V11),
            "1.2" => Some(SoapVersion::V12),
            other => {
                cx.error(
                    v.pos,
                    format!("unknown soap_version `{other}`"),
                    Some("use \"1.1\" or \"1.2\" (quoted)".into()),
                );
                return None;
            }
        },
    };
    let wsdl = match load_wsdl(cx.file, &c.wsdl.value) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            cx.error(
                c.wsdl.pos,
                format!("cannot load WSDL `{}`: {e}", c.wsdl.value),
                Some("a path relative to the project folder, or an http(s) URL".into()),
            );
            return None;
        }
    };
    let Some(op) = wsdl.operation(&c.operation.value) else {
        let names: Vec<&str> = wsdl.operation_names().collect();
        let hint = match crate::diag::did_you_mean(&c.operation.value, names.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("operations: {}", names.join(", ")),
        };
        cx.error(
            c.operation.pos,
            format!(
                "unknown operation `{}` in `{}`",
                c.operation.value, c.wsdl.value
            ),
            Some(hint),
        );
        return None;
    };
    let Some(binding) = op.binding(version) else {
        let has: Vec<&str> = op.bindings.iter().map(|b| b.version.name()).collect();
        cx.error(
            c.soap_version
                .as_ref()
                .map(|v| v.pos)
                .unwrap_or(c.operation.pos),
            format!(
                "operation `{}` has no SOAP {} binding",
                op.name,
                version.map(SoapVersion::name).unwrap_or("")
            ),
            Some(format!("the WSDL binds it with SOAP {}", has.join(", "))),
        );
        return None;
    };
    if binding.encoded {
        cx.error(
            c.operation.pos,
            format!(
                "operation `{}` uses SOAP encoding (use=\"encoded\"), which is not supported",
                op.name
            ),
            Some(
                "only literal bindings are supported; write the request yourself with `envelope`"
                    .into(),
            ),
        );
        return None;
    }
    if connection.is_none() && binding.address.is_none() {
        cx.error(
            c.operation.pos,
            format!("the WSDL gives no endpoint for operation `{}`", op.name),
            Some("add `connection:` with the endpoint as its base_url".into()),
        );
        return None;
    }
    let mut ok = true;
    let mut t = |n: &Option<Node>, cx: &mut CompileCx| -> Option<Template> {
        let n = n.as_ref()?;
        let r = cx.template(n);
        ok &= r.is_some();
        r
    };
    let headers = t(&c.headers, cx);
    let content = match &c.envelope {
        Some(e) => {
            if !matches!(e.value, Value::Str(_)) {
                cx.error(
                    e.pos,
                    "`envelope` must be a string (the XML of the whole envelope)",
                    Some("write it as a block: `envelope: |`".into()),
                );
                return None;
            }
            t(&c.envelope, cx).map(Content::Envelope)
        }
        None => Some(Content::Body(t(&c.body, cx))),
    };
    if !ok {
        return None;
    }
    let input = wsdl.body_element(&op.input, binding.style, &op.name);
    let output = wsdl.body_element(&op.output, binding.style, &format!("{}Response", op.name));
    let max_response_bytes = c
        .max_response_bytes
        .or(connection.as_ref().map(|c| c.max_response_bytes))
        .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    Some(Box::new(Soap {
        connection,
        operation: op.name.clone(),
        version: binding.version,
        style: binding.style,
        action: binding.action.clone(),
        address: binding.address.clone(),
        rpc_namespace: binding.namespace.clone(),
        input,
        output,
        content: content?,
        headers,
        security: c.ws_security,
        max_response_bytes,
        wsdl,
    }))
}

/// The project folder of a flow file: the parent of its `flows/` folder, else its folder.
fn project_dir(flow_file: &str) -> PathBuf {
    let dir = Path::new(flow_file).parent().unwrap_or(Path::new("."));
    match dir.file_name() {
        Some(n) if n == "flows" => dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Reads a WSDL when the flow loads: a file under the project folder, or a URL.
fn load_wsdl(flow_file: &str, location: &str) -> Result<Wsdl, String> {
    let text = if location.starts_with("http://") || location.starts_with("https://") {
        crate::soap::fetch(location)?
    } else {
        let path = project_dir(flow_file).join(location);
        crate::soap::read_file(&path)?
    };
    Wsdl::parse(&text).map_err(|e| e.to_string())
}

impl Step for Soap {
    fn connection(&self) -> Option<&Connection> {
        self.connection.as_deref()
    }

    fn calls_out(&self) -> bool {
        true
    }

    fn value_sources(&self) -> Vec<&ValueSource> {
        self.security
            .iter()
            .flat_map(|s| [&s.username, &s.password])
            .collect()
    }

    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            let (content, headers) = self.render(cx).await?;
            self.send(cx, content, headers).await
        }
        .boxed()
    }
}

/// The rendered request: the body's JSON, or the envelope's text.
enum Rendered {
    Body(Json),
    Envelope(String),
}

impl Soap {
    async fn render(&self, cx: &StepCx) -> Result<(Rendered, Option<Json>), StepError> {
        let headers = self.headers.clone();
        let (content, bounded) = match &self.content {
            Content::Body(t) => (
                Content::Body(t.clone()),
                t.as_ref().is_none_or(Template::is_bounded),
            ),
            Content::Envelope(t) => (Content::Envelope(t.clone()), t.is_bounded()),
        };
        let bounded = bounded && headers.as_ref().is_none_or(Template::is_bounded);
        cx.eval(bounded, move |ctx| {
            let content = match &content {
                Content::Body(None) => Rendered::Body(Json::Null),
                Content::Body(Some(t)) => Rendered::Body(t.render(ctx).map_err(|e| EvalError {
                    message: format!("in `body`: {}", e.message),
                })?),
                Content::Envelope(t) => {
                    Rendered::Envelope(render_escaped(t, ctx).map_err(|e| EvalError {
                        message: format!("in `envelope`: {}", e.message),
                    })?)
                }
            };
            let headers = match &headers {
                Some(t) => Some(t.render(ctx).map_err(|e| EvalError {
                    message: format!("in `headers`: {}", e.message),
                })?),
                None => None,
            };
            Ok((content, headers))
        })
        .await
    }

    fn token(&self, cx: &StepCx) -> Result<Option<UsernameToken>, StepError> {
        let Some(s) = &self.security else {
            return Ok(None);
        };
        let resolve = |v: &ValueSource, field: &str| {
            cx.secrets
                .resolve(v)
                .map_err(|e| StepError::new(ErrorKind::Config, format!("ws_security.{field}: {e}")))
        };
        let username = resolve(&s.username, "username")?;
        let password = resolve(&s.password, "password")?;
        let token = UsernameToken::new(username.to_string(), password.to_string(), s.digest);
        // Whatever identifies the caller is scrubbed wherever an upstream echoes it.
        cx.secrets.taint(&token.password);
        cx.secrets.taint(&token.sent_secret());
        Ok(Some(token))
    }

    async fn send(
        &self,
        cx: &StepCx,
        content: Rendered,
        headers: Option<Json>,
    ) -> Result<StepOutput, StepError> {
        let url = match &self.connection {
            Some(conn) => call::connection_url(cx, conn, "")?,
            None => call::parse_url(self.address.as_deref().unwrap_or(""))?,
        };
        let token = self.token(cx)?;
        let built = match content {
            Rendered::Body(body) => {
                let qualified_children = match self.wsdl.schema.complex_of(&self.input) {
                    Some(ct) => self
                        .wsdl
                        .schema
                        .elements_of(&ct)
                        .first()
                        .is_some_and(|e| e.ns.is_some()),
                    None => false,
                };
                envelope::build(
                    &Request {
                        version: self.version,
                        style: self.style,
                        element: &self.input,
                        rpc_namespace: self.rpc_namespace.as_deref(),
                        qualified_children,
                        content: &body,
                        order: &SchemaPaths {
                            wsdl: &self.wsdl,
                            root: &self.input,
                            rpc: self.style == Style::Rpc,
                        },
                    },
                    token.as_ref(),
                )
            }
            Rendered::Envelope(text) => match &token {
                Some(t) => envelope::add_security(&text, self.version, t),
                None => Ok(envelope::Built {
                    record: text.clone(),
                    text,
                }),
            },
        }
        .map_err(|e| {
            StepError::new(
                ErrorKind::Expression,
                format!("cannot build the request for `{}`: {e}", self.operation),
            )
        })?;

        let mut out_headers: Vec<(String, String)> = Vec::new();
        if self.version == SoapVersion::V11 {
            out_headers.push((
                "soapaction".into(),
                format!("\"{}\"", self.action.as_deref().unwrap_or("")),
            ));
        }
        if let Some(Json::Object(h)) = &headers {
            out_headers.extend(h.iter().map(|(k, v)| (k.clone(), scalar_text(v))));
        }
        let reply = call::send(
            cx,
            Outbound {
                connection: self.connection.as_deref(),
                method: reqwest::Method::POST,
                url: url.clone(),
                // The endpoint comes from the operator's WSDL or connection, never from data.
                guarded: false,
                headers: out_headers,
                body: OutBody::Bytes {
                    content_type: envelope::content_type(self.version, self.action.as_deref()),
                    bytes: built.text.into_bytes(),
                    record: Json::String(built.record),
                },
                max_response_bytes: self.max_response_bytes,
            },
        )
        .await?;
        self.read(reply, &url)
    }

    /// The answer: the Body's element typed by the WSDL, or a Fault as an error.
    fn read(&self, reply: call::Reply, url: &reqwest::Url) -> Result<StepOutput, StepError> {
        let bad = |reply: call::Reply, message: String| {
            if !reply.is_success() {
                // Not SOAP at all: a proxy's error page, a 503. The status says what happened.
                let body = reply.body_value();
                return reply.status_error(&reqwest::Method::POST, url, body);
            }
            let mut e = StepError::new(ErrorKind::BadResponse, message);
            e.response = Some(reply.result(reply.text()));
            e.request = Some(reply.request);
            e
        };
        // A one-way operation's answer (WS-I Basic Profile): `202 Accepted` or `200` without
        // an envelope. Nothing to read, and nothing went wrong.
        if reply.is_success() && reply.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(StepOutput {
                value: reply.result(Json::Null),
                request: Some(reply.request),
                outcome: super::Outcome::Continue,
            });
        }
        let decoded = match decode(&reply) {
            Ok(t) => t,
            Err(m) => return Err(bad(reply, m)),
        };
        let text = decoded.as_ref();
        let limits = xml::Limits {
            max_bytes: usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX),
            ..xml::Limits::default()
        };
        let doc = match xml::parse(text, &limits) {
            Ok(d) => d,
            Err(e) => {
                return Err(bad(
                    reply,
                    format!("the SOAP response is not readable: {e}"),
                ));
            }
        };
        let answer = match envelope::read(&doc) {
            Ok(a) => a,
            Err(e) => return Err(bad(reply, e)),
        };
        match answer {
            Answer::Fault(f) => {
                let mut e = StepError::new(
                    ErrorKind::Fault {
                        retryable: f.is_server(),
                    },
                    format!("SOAP fault {}: {}", f.code, f.string),
                );
                e.response = Some(reply.result(f.to_json()));
                e.request = Some(reply.request);
                e.retry_after = reply.retry_after;
                Err(e)
            }
            _ if !reply.is_success() => {
                let body = reply.text();
                Err(reply.status_error(&reqwest::Method::POST, url, body))
            }
            Answer::Empty => Ok(StepOutput {
                value: reply.result(Json::Null),
                request: Some(reply.request.clone()),
                outcome: super::Outcome::Continue,
            }),
            Answer::Element(node) => {
                let types = SchemaPaths {
                    wsdl: &self.wsdl,
                    root: &self.output,
                    rpc: self.style == Style::Rpc,
                };
                let mut path = Vec::new();
                let value = xml::element_value(node, &types, &mut path);
                let mut body = serde_json::Map::new();
                body.insert(node.tag_name().name().to_owned(), value);
                Ok(StepOutput {
                    value: reply.result(Json::Object(body)),
                    request: Some(reply.request.clone()),
                    outcome: super::Outcome::Continue,
                })
            }
        }
    }
}

/// Renders an `envelope` template: text as written, interpolated values XML-escaped.
fn render_escaped(t: &Template, ctx: &Val) -> Result<String, EvalError> {
    let value = |v: Json| envelope::escape(&scalar_text(&v));
    match t {
        Template::Text(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Part::Text(s) => out.push_str(s),
                    Part::Expr(e) => out.push_str(&value(e.eval(ctx)?)),
                }
            }
            Ok(out)
        }
        Template::Literal(v) => Ok(scalar_text(v)),
        other => Ok(value(other.render(ctx)?)),
    }
}

/// The response as text: UTF-8, or the charset the `Content-Type` or the XML declaration
/// names (legacy servers answer ISO-8859-1 or windows-1252).
fn decode(reply: &call::Reply) -> Result<std::borrow::Cow<'_, str>, String> {
    if let Ok(t) = std::str::from_utf8(&reply.bytes) {
        return Ok(std::borrow::Cow::Borrowed(t));
    }
    let from_header = reply
        .headers
        .get("content-type")
        .and_then(Json::as_str)
        .and_then(|ct| {
            ct.split(';')
                .find_map(|p| p.trim().strip_prefix("charset="))
                .map(|c| c.trim_matches('"').to_owned())
        });
    let from_decl = || {
        let head = String::from_utf8_lossy(&reply.bytes[..reply.bytes.len().min(200)]).into_owned();
        let decl = head.strip_prefix("<?xml")?.split("?>").next()?.to_owned();
        let at = decl.find("encoding=")? + "encoding=".len();
        let quote = decl[at..].chars().next()?;
        let rest = &decl[at + 1..];
        Some(rest[..rest.find(quote)?].to_owned())
    };
    let label = from_header
        .or_else(from_decl)
        .ok_or_else(|| "the SOAP response is not UTF-8 and names no other charset".to_owned())?;
    let encoding = encoding_rs::Encoding::for_label(label.as_bytes())
        .ok_or_else(|| format!("the SOAP response's charset `{label}` is unknown"))?;
    let (text, _, errors) = encoding.decode(&reply.bytes);
    if errors {
        return Err(format!(
            "the SOAP response is not valid {}",
            encoding.name()
        ));
    }
    Ok(std::borrow::Cow::Owned(text.into_owned()))
}

/// What the WSDL's schema says below a message element: for the response, the types of the
/// XML mapping (integers, decimals and booleans typed as the WSDL says; elements with
/// `maxOccurs` > 1 always lists); for the request, the order of each element's children.
struct SchemaPaths<'a> {
    wsdl: &'a Wsdl,
    root: &'a ElementDecl,
    rpc: bool,
}

enum Found {
    Element(ElementDecl),
    Attribute(Option<Kind>),
}

impl SchemaPaths<'_> {
    fn find(&self, path: &[&str]) -> Option<Found> {
        let schema = &self.wsdl.schema;
        let (first, rest) = path.split_first()?;
        // rpc wrappers are named by convention (`OpResponse`), not by a schema: any name.
        if *first != self.root.name && !self.rpc {
            return None;
        }
        let mut cur = schema.deref(self.root).into_owned();
        for name in rest {
            let ct = schema.complex_of(&cur)?;
            if let Some(a) = name.strip_prefix('@') {
                return Some(Found::Attribute(
                    ct.attributes
                        .iter()
                        .find(|(n, _)| n == a)
                        .and_then(|(_, t)| schema.kind_of(t)),
                ));
            }
            cur = schema
                .elements_of(&ct)
                .into_iter()
                .find(|e| e.name == *name)?;
        }
        Some(Found::Element(cur))
    }
}

impl xml::Order for SchemaPaths<'_> {
    fn children(&self, path: &[&str]) -> Option<Vec<String>> {
        let Found::Element(e) = self.find(path)? else {
            return None;
        };
        let schema = &self.wsdl.schema;
        let ct = schema.complex_of(&e)?;
        Some(
            schema
                .elements_of(&ct)
                .into_iter()
                .map(|c| c.name)
                .collect(),
        )
    }
}

impl xml::Types for SchemaPaths<'_> {
    fn scalar(&self, path: &[&str]) -> Option<xml::Scalar> {
        let kind = match self.find(path)? {
            Found::Attribute(k) => k,
            Found::Element(e) => {
                let schema = &self.wsdl.schema;
                match schema.resolve(&e.ty) {
                    Some(TypeDef::Complex(_)) => schema
                        .complex_of(&e)
                        .and_then(|ct| ct.text.as_ref().and_then(|t| schema.kind_of(t))),
                    _ => schema.kind_of(&e.ty),
                }
            }
        };
        Some(match kind? {
            Kind::String => xml::Scalar::String,
            Kind::Integer => xml::Scalar::Integer,
            Kind::Decimal => xml::Scalar::Decimal,
            Kind::Boolean => xml::Scalar::Boolean,
        })
    }

    fn repeated(&self, path: &[&str]) -> bool {
        matches!(self.find(path), Some(Found::Element(e)) if e.many)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(content_type: &str, bytes: &[u8]) -> call::Reply {
        let mut headers = serde_json::Map::new();
        headers.insert("content-type".into(), content_type.into());
        call::Reply {
            status: 200,
            headers,
            media_type: None,
            bytes: bytes.to_vec(),
            retry_after: None,
            request: Json::Null,
        }
    }

    #[test]
    fn legacy_charsets_are_decoded_by_the_header_or_the_declaration() {
        // "Müller" in ISO-8859-1: ü is the single byte 0xFC.
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><n>M\xfcller</n>";
        assert!(
            decode(&reply("text/xml", latin1))
                .unwrap()
                .contains("Müller")
        );
        let bare = b"<n>M\xfcller</n>";
        assert!(
            decode(&reply("text/xml; charset=iso-8859-1", bare))
                .unwrap()
                .contains("Müller")
        );
        let e = decode(&reply("text/xml", bare)).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = decode(&reply("text/xml; charset=klingon", bare)).unwrap_err();
        assert!(e.contains("`klingon` is unknown"), "{e}");
    }
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wsdl");

    /// `ferry validate` of a project with the fixtures under `wsdl/` and one flow.
    fn validate(steps: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("flows")).unwrap();
        std::fs::create_dir_all(dir.path().join("wsdl")).unwrap();
        for f in ["warehouse.wsdl", "calculator-rpc.wsdl"] {
            std::fs::copy(format!("{FIXTURES}/{f}"), dir.path().join("wsdl").join(f)).unwrap();
        }
        let flow = format!("id: f\ntrigger: {{ manual: {{}} }}\nsteps:\n{steps}");
        std::fs::write(dir.path().join("flows/f.yaml"), flow).unwrap();
        let diags = crate::flow::validate_paths(&[dir.path().to_path_buf()]);
        diags
            .to_string()
            .replace(&dir.path().display().to_string(), "P")
    }

    #[test]
    fn compile_errors_are_located_with_hints() {
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/warehouse.wsdl\n      operation: GetStok\n"
        ), @r"
        P/flows/f.yaml:7:18: error: unknown operation `GetStok` in `wsdl/warehouse.wsdl`
          hint: did you mean `GetStock`?
        ");
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/nope.wsdl\n      operation: GetStock\n"
        ).lines().next().unwrap(), @"P/flows/f.yaml:6:13: error: cannot load WSDL `wsdl/nope.wsdl`: P/wsdl/nope.wsdl: No such file or directory (os error 2)");
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/calculator-rpc.wsdl\n      operation: Add\n      soap_version: '1.2'\n"
        ), @r"
        P/flows/f.yaml:8:21: error: operation `Add` has no SOAP 1.2 binding
          hint: the WSDL binds it with SOAP 1.1
        ");
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/calculator-rpc.wsdl\n      operation: Legacy\n"
        ).lines().next().unwrap(), @r#"P/flows/f.yaml:7:18: error: operation `Legacy` uses SOAP encoding (use="encoded"), which is not supported"#);
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/warehouse.wsdl\n      operation: GetStock\n      body: {}\n      envelope: '<x/>'\n"
        ).lines().next().unwrap(), @"P/flows/f.yaml:9:17: error: `body` and `envelope` exclude each other");
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/warehouse.wsdl\n      operation: GetStock\n      soap_version: '2'\n"
        ).lines().next().unwrap(), @"P/flows/f.yaml:8:21: error: unknown soap_version `2`");
        insta::assert_snapshot!(validate(
            "  - id: s\n    soap:\n      wsdl: wsdl/warehouse.wsdl\n      operation: GetStock\n      body: { sku: '{{ .nope | }}' }\n      ws_security: { username: u, pasword: p }\n"
        ).lines().next().unwrap(), @"P/flows/f.yaml:9:35: error: unknown key `pasword`");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("flows")).unwrap();
        std::fs::create_dir_all(dir.path().join("wsdl")).unwrap();
        std::fs::copy(
            format!("{FIXTURES}/warehouse.wsdl"),
            dir.path().join("wsdl/w.wsdl"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("flows/f.yaml"),
            "id: f\ntrigger: manual\nsteps:\n  - id: s\n    soap: { wsdl: wsdl/w.wsdl, operation: GetStock, ws_security: { username: u, password: { secret: wh_pw } } }\n",
        )
        .unwrap();
        let project = crate::flow::load_project(dir.path()).ok().unwrap();
        // The start-up check of unset secrets sees the step's password.
        assert_eq!(project.secret_refs(), ["wh_pw"]);
        assert_eq!(
            validate(
                "  - id: s\n    soap:\n      wsdl: wsdl/warehouse.wsdl\n      operation: Reserve\n      soap_version: 1.2\n      body: { '@orderId': '{{ .event.body.id }}', line: [] }\n      ws_security: { username: u, password: { env: PW }, digest: true }\n"
            ),
            ""
        );
    }

    fn warehouse() -> Wsdl {
        Wsdl::parse(&std::fs::read_to_string(format!("{FIXTURES}/warehouse.wsdl")).unwrap())
            .unwrap()
    }

    #[test]
    fn responses_are_typed_by_the_wsdl_schema() {
        let w = warehouse();
        let op = w.operation("GetStock").unwrap();
        let output = w.body_element(&op.output, Style::Document, "GetStockResponse");
        let types = SchemaPaths {
            wsdl: &w,
            root: &output,
            rpc: false,
        };
        let text = r#"<GetStockResponse xmlns="urn:example:warehouse"><item revision="3"><sku>AB-1</sku><quantity>7</quantity><price>19.90</price><available>true</available><bin>A1</bin><weight unit="kg">1.5</weight></item></GetStockResponse>"#;
        let doc = xml::parse(text, &xml::Limits::default()).unwrap();
        let value = xml::element_value(doc.root_element(), &types, &mut Vec::new());
        assert_eq!(
            value,
            json!({"item": {
                "@revision": 3,
                "sku": "AB-1",
                "quantity": 7,
                "price": 19.9,
                "available": true,
                "bin": ["A1"],
                "weight": {"@unit": "kg", "#text": 1.5}
            }})
        );
        // A name the schema does not know stays untyped; so does another root.
        assert_eq!(
            xml::Types::scalar(&types, &["GetStockResponse", "item", "x"]),
            None
        );
        assert_eq!(xml::Types::scalar(&types, &["Other", "item"]), None);

        // rpc: parts typed by their XSD types, whatever the wrapper is called.
        let rpc = Wsdl::parse(
            &std::fs::read_to_string(format!("{FIXTURES}/calculator-rpc.wsdl")).unwrap(),
        )
        .unwrap();
        let add = rpc.operation("Add").unwrap();
        let output = rpc.body_element(&add.output, Style::Rpc, "AddResponse");
        let types = SchemaPaths {
            wsdl: &rpc,
            root: &output,
            rpc: true,
        };
        let doc = xml::parse(
            r#"<m:AddResult xmlns:m="urn:calculator"><sum>5</sum><exact>true</exact></m:AddResult>"#,
            &xml::Limits::default(),
        )
        .unwrap();
        assert_eq!(
            xml::element_value(doc.root_element(), &types, &mut Vec::new()),
            json!({"sum": 5, "exact": true})
        );
    }

    #[test]
    fn envelope_templates_escape_interpolated_values() {
        let t =
            Template::compile_str("<s:Body><sku>{{ .sku }}</sku><n>{{ .n }}</n></s:Body>").unwrap();
        let ctx = crate::expr::json_to_val(&json!({"sku": "a</sku><admin>1", "n": 2}));
        assert_eq!(
            render_escaped(&t, &ctx).unwrap(),
            "<s:Body><sku>a&lt;/sku&gt;&lt;admin&gt;1</sku><n>2</n></s:Body>"
        );
        assert_eq!(project_dir("p/flows/f.yaml"), PathBuf::from("p"));
        assert_eq!(project_dir("p/other/f.yaml"), PathBuf::from("p/other"));
    }
}
