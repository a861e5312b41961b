//! `ferry import openapi FILE|URL`: writes a connection (and a copy of the spec) into a
//! project from an API description, and lists its operations.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::openapi::{ParamIn, SecurityScheme, Spec};

#[derive(Subcommand)]
pub(super) enum ImportKind {
    /// An OpenAPI 3.0 or 3.1 document (JSON or YAML), from a file or a URL: copies it to
    /// `specs/ID.yaml|json`, writes `connections/ID.yaml` (base URL, `openapi:`, `auth:`
    /// placeholders) and prints the operations.
    Openapi {
        /// The spec: a file path or an http(s) URL.
        source: String,
        /// The connection id (default: from the spec's title, else the file name).
        #[arg(long)]
        id: Option<String>,
        /// The project folder to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace an existing connection file and spec copy.
        #[arg(long)]
        force: bool,
    },
    /// A SOAP service's WSDL 1.1, from a file or a URL: lists the operations with their input
    /// and output shapes, copies it to `wsdl/ID.wsdl` and writes `connections/ID.yaml`.
    Wsdl(super::import_wsdl::WsdlArgs),
}

pub(super) async fn import(kind: ImportKind) -> anyhow::Result<i32> {
    match kind {
        ImportKind::Openapi {
            source,
            id,
            out,
            force,
        } => openapi(&source, id, &out, force).await.map(|_| 0),
        ImportKind::Wsdl(args) => super::import_wsdl::run(args),
    }
}

async fn openapi(source: &str, id: Option<String>, out: &Path, force: bool) -> anyhow::Result<()> {
    let is_url = source.starts_with("http://") || source.starts_with("https://");
    let (text, spec) = if is_url {
        let text = fetch(source).await?;
        let spec = Spec::parse(&text, source)?;
        (text, spec)
    } else {
        let path = Path::new(source);
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read `{source}`"))?;
        let spec = Spec::load(path)?;
        (text, spec)
    };
    let id = match id {
        Some(id) => id,
        None => default_id(&spec.title, source),
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("invalid connection id `{id}`: use letters, digits, `-` and `_` (pass `--id NAME`)");
    }
    let json = text.trim_start().starts_with('{');
    // A spec with external references is stored bundled (as JSON), so the copy stands alone.
    let bundled = spec.doc.get("x-ferry-bundled").is_some();
    let ext = if json || bundled { "json" } else { "yaml" };
    let spec_rel = format!("specs/{id}.{ext}");
    let spec_path = out.join(&spec_rel);
    let conn_path = out.join("connections").join(format!("{id}.yaml"));
    for p in [&conn_path, &spec_path] {
        if p.exists() && !force {
            bail!(
                "`{}` already exists; pass `--force` to replace it, or `--id` for another name",
                p.display()
            );
        }
    }
    let base_url = spec.base_url(is_url.then_some(source));
    let connection = connection_yaml(&spec, &id, &spec_rel, base_url.as_deref(), source);
    std::fs::create_dir_all(out.join("specs"))
        .and_then(|_| std::fs::create_dir_all(out.join("connections")))
        .with_context(|| format!("cannot create folders in `{}`", out.display()))?;
    let copy = if bundled {
        serde_json::to_string_pretty(&spec.doc)? + "\n"
    } else {
        text
    };
    std::fs::write(&spec_path, copy)
        .with_context(|| format!("cannot write `{}`", spec_path.display()))?;
    std::fs::write(&conn_path, connection)
        .with_context(|| format!("cannot write `{}`", conn_path.display()))?;
    say!("wrote {} and {}", conn_path.display(), spec_path.display());
    if base_url.is_none() {
        say!(
            "note: the spec names no absolute server URL; set `{}` or edit `base_url`",
            env_name(&id, "BASE_URL")
        );
    }
    print_operations(&spec);
    Ok(())
}

async fn fetch(url: &str) -> anyhow::Result<String> {
    use crate::util::FetchError;
    let max = crate::openapi::MAX_SPEC_BYTES;
    crate::util::fetch_text(url, max, std::time::Duration::from_secs(60))
        .await
        .map_err(|e| match e {
            FetchError::Transport(m) => anyhow::anyhow!("cannot fetch `{url}`: {m}"),
            FetchError::Status(s) => match reqwest::StatusCode::from_u16(s) {
                Ok(code) => anyhow::anyhow!("cannot fetch `{url}`: HTTP {code}"),
                Err(_) => anyhow::anyhow!("cannot fetch `{url}`: HTTP {s}"),
            },
            FetchError::TooLarge => anyhow::anyhow!("`{url}` is larger than {max} bytes"),
            FetchError::NotUtf8 => anyhow::anyhow!("`{url}` is not UTF-8 text"),
        })
}

/// `Acme CRM` → `acme-crm`; an empty title falls back to the file name.
fn default_id(title: &str, source: &str) -> String {
    let slug = |s: &str| {
        let mut out = String::new();
        for c in s.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        out.trim_end_matches('-').to_owned()
    };
    let from_title = slug(title);
    if !from_title.is_empty() {
        return from_title;
    }
    let stem = source
        .rsplit('/')
        .next()
        .unwrap_or(source)
        .split('.')
        .next()
        .unwrap_or("");
    slug(stem)
}

/// `crm-api` + `TOKEN` → `CRM_API_TOKEN` (a valid secret name).
fn env_name(id: &str, what: &str) -> String {
    format!("{}_{what}", id.to_ascii_uppercase().replace('-', "_"))
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn connection_yaml(
    spec: &Spec,
    id: &str,
    spec_rel: &str,
    base_url: Option<&str>,
    source: &str,
) -> String {
    // A fetch URL may carry a token (user info, a query): the file records only where from.
    let shown = match url::Url::parse(source) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => source.to_owned(),
    };
    let mut y = format!(
        "# Written by `ferry import openapi {shown}`: {} {}.\nid: {id}\n",
        spec.title, spec.api_version
    );
    match base_url {
        Some(u) => y.push_str(&format!("base_url: {}\n", yaml_str(u))),
        None => y.push_str(&format!(
            "base_url: {{ env: {} }}\n",
            env_name(id, "BASE_URL")
        )),
    }
    y.push_str(&format!("openapi: {spec_rel}\n"));
    // The scheme the spec requires for every operation, else the first one `auth:` can
    // express, else the first one it defines (as a comment).
    let chosen = spec
        .security
        .iter()
        .find_map(|name| spec.security_schemes.iter().find(|(n, _)| n == name))
        .or_else(|| {
            spec.security_schemes
                .iter()
                .find(|(_, s)| !matches!(s, SecurityScheme::Other(_)))
        })
        .or_else(|| spec.security_schemes.first());
    for (name, scheme) in &spec.security_schemes {
        if Some(name) != chosen.map(|(n, _)| n) {
            y.push_str(&format!(
                "# the spec also offers `{name}`: {}\n",
                describe(scheme)
            ));
        }
    }
    if let Some((name, scheme)) = chosen {
        let secret = |what: &str| format!("{{ secret: {} }}", env_name(id, what));
        let auth = match scheme {
            SecurityScheme::Bearer => Some(format!("  bearer: {{ token: {} }}\n", secret("TOKEN"))),
            SecurityScheme::Basic => Some(format!(
                "  basic: {{ username: {}, password: {} }}\n",
                secret("USERNAME"),
                secret("PASSWORD")
            )),
            SecurityScheme::ApiKey { name, location } => Some(format!(
                "  api_key: {{ {location}: {}, value: {} }}\n",
                yaml_str(name),
                secret("API_KEY")
            )),
            SecurityScheme::OAuth2 {
                token_url,
                client_credentials,
                scopes,
            } => {
                let mut a = String::from("  oauth2:\n");
                if !client_credentials {
                    a.push_str("    grant: refresh_token\n");
                }
                a.push_str(&format!("    token_url: {}\n", yaml_str(token_url)));
                a.push_str(&format!("    client_id: {}\n", secret("CLIENT_ID")));
                a.push_str(&format!("    client_secret: {}\n", secret("CLIENT_SECRET")));
                if !client_credentials {
                    a.push_str(&format!("    refresh_token: {}\n", secret("REFRESH_TOKEN")));
                }
                if !scopes.is_empty() {
                    let s: Vec<String> = scopes.iter().map(|s| yaml_str(s)).collect();
                    a.push_str(&format!("    scopes: [{}]\n", s.join(", ")));
                }
                Some(a)
            }
            SecurityScheme::Other(what) => {
                y.push_str(&format!(
                    "# the spec's `{name}` ({what}) has no `auth:` equivalent; see docs/security.md\n"
                ));
                None
            }
        };
        if let Some(a) = auth {
            y.push_str(&format!(
                "# from the spec's `{name}`; set the secrets with `ferry secrets set`\nauth:\n{a}"
            ));
        }
    }
    y
}

fn describe(s: &SecurityScheme) -> &'static str {
    match s {
        SecurityScheme::Bearer => "bearer token",
        SecurityScheme::Basic => "HTTP basic",
        SecurityScheme::ApiKey { .. } => "API key",
        SecurityScheme::OAuth2 { .. } => "OAuth 2.0",
        SecurityScheme::Other(_) => "not expressible as `auth:`",
    }
}

fn print_operations(spec: &Spec) {
    let rows: Vec<[String; 5]> = spec
        .operations
        .iter()
        .map(|op| {
            let required: Vec<String> = op
                .params
                .iter()
                .filter(|p| p.required && p.location != ParamIn::Cookie)
                .map(|p| match p.location {
                    ParamIn::Path => p.name.clone(),
                    ParamIn::Query => format!("?{}", p.name),
                    _ => format!("{}:", p.name),
                })
                .collect();
            let body = match &op.body {
                Some(b) if b.required => "yes",
                Some(_) => "optional",
                None => "no",
            };
            [
                op.id.clone(),
                op.method.clone(),
                op.path.clone(),
                if required.is_empty() {
                    "-".into()
                } else {
                    required.join(" ")
                },
                body.into(),
            ]
        })
        .collect();
    let header = ["OPERATION", "METHOD", "PATH", "REQUIRED", "BODY"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `auth:` shape written compiles as a connection, with the spec beside it.
    #[test]
    fn each_security_scheme_becomes_an_auth_that_validates() {
        let cases = [
            (
                "{type: http, scheme: basic}",
                "basic: { username: { secret: X_USERNAME }, password: { secret: X_PASSWORD } }",
            ),
            (
                "{type: apiKey, in: query, name: api_key}",
                "api_key: { query: \"api_key\", value: { secret: X_API_KEY } }",
            ),
            (
                "{type: apiKey, in: header, name: X-Key}",
                "api_key: { header: \"X-Key\", value: { secret: X_API_KEY } }",
            ),
            (
                "{type: oauth2, flows: {clientCredentials: {tokenUrl: 'https://a.example/t', scopes: {r: read}}}}",
                "    scopes: [\"r\"]\n",
            ),
            (
                "{type: oauth2, flows: {authorizationCode: {authorizationUrl: 'https://a.example/a', tokenUrl: 'https://a.example/t', scopes: {}}}}",
                "    grant: refresh_token\n",
            ),
            (
                "{type: openIdConnect, openIdConnectUrl: 'https://a.example/.well-known'}",
                "has no `auth:` equivalent",
            ),
        ];
        for (scheme, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "openapi: 3.0.0\ninfo: {{title: X, version: '1'}}\ncomponents:\n  securitySchemes:\n    s: {scheme}\n"
            );
            std::fs::create_dir_all(dir.path().join("specs")).unwrap();
            std::fs::create_dir_all(dir.path().join("connections")).unwrap();
            std::fs::write(dir.path().join("specs/x.yaml"), &text).unwrap();
            let spec = Spec::parse(&text, "x.yaml").unwrap();
            let yaml = connection_yaml(
                &spec,
                "x",
                "specs/x.yaml",
                None,
                "https://u:p@h.example/s.yaml?token=t",
            );
            assert!(yaml.contains(expected), "{scheme}: {yaml}");
            // No server: the base URL is left to the environment.
            assert!(yaml.contains("base_url: { env: X_BASE_URL }"), "{yaml}");
            assert!(
                yaml.starts_with("# Written by `ferry import openapi https://h.example/s.yaml`"),
                "{yaml}"
            );
            let file = dir.path().join("connections/x.yaml");
            std::fs::write(&file, &yaml).unwrap();
            let node = crate::flow::node::parse_yaml(&yaml).unwrap();
            let mut diags = crate::diag::Diagnostics::default();
            let conn =
                crate::flow::compile::compile_connection(file.to_str().unwrap(), &node, &mut diags);
            assert!(
                conn.is_some_and(|(c, _)| c.openapi.is_some()),
                "{scheme}: {diags}"
            );
        }
    }

    #[test]
    fn ids_and_secret_names_are_derived_safely() {
        assert_eq!(default_id("Acme CRM (v2)", "x.yaml"), "acme-crm-v2");
        assert_eq!(default_id("", "https://h/specs/billing.json"), "billing");
        assert_eq!(env_name("acme-crm", "TOKEN"), "ACME_CRM_TOKEN");
        assert!(crate::secret::check_name(&env_name("acme-crm", "TOKEN")).is_ok());
    }
}
