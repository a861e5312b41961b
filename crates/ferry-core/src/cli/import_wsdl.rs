//! `ferry import wsdl FILE|URL`: lists a SOAP service's operations with their input and
//! output shapes, keeps a copy of the WSDL in the project (`wsdl/NAME.wsdl`), and writes
//! `connections/NAME.yaml` with the service address as `base_url`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::soap::wsdl::{Style, Wsdl};

#[derive(clap::Args)]
pub(super) struct WsdlArgs {
    /// The WSDL: a file, or an http(s) URL (e.g. `https://host/service?wsdl`).
    pub(super) source: String,
    /// The connection id, also the WSDL copy's name (default: from the WSDL's service name).
    #[arg(long)]
    pub(super) id: Option<String>,
    /// The project folder to write into.
    #[arg(long, default_value = ".", alias = "project")]
    pub(super) out: PathBuf,
    /// Overwrite `connections/NAME.yaml` and `wsdl/NAME.wsdl` when they exist.
    #[arg(long)]
    pub(super) force: bool,
}

pub(super) fn run(args: WsdlArgs) -> anyhow::Result<i32> {
    let is_url = args.source.starts_with("http://") || args.source.starts_with("https://");
    let text = if is_url {
        crate::soap::fetch(&args.source)
    } else {
        crate::soap::read_file(std::path::Path::new(&args.source))
    }
    .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", args.source))?;
    let wsdl = Wsdl::parse(&text).with_context(|| format!("`{}`", args.source))?;
    let id = match args.id {
        Some(id) => id,
        None => default_id(&wsdl, &args.source),
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("invalid connection id `{id}`: use letters, digits, `-` and `_` (pass --id)");
    }
    // Without a `soap:address` the endpoint comes from the environment, as for an OpenAPI
    // spec without servers: the file still validates, and says what to set.
    let address = match wsdl.addresses.first() {
        Some(a) => a.clone(),
        None => format!(
            "{{ env: {} }}",
            id.to_ascii_uppercase().replace('-', "_") + "_BASE_URL"
        ),
    };

    let wsdl_rel = format!("wsdl/{id}.wsdl");
    let wsdl_path = args.out.join(&wsdl_rel);
    let conn_path = args.out.join("connections").join(format!("{id}.yaml"));
    for p in [&wsdl_path, &conn_path] {
        if p.exists() && !args.force {
            bail!("{} exists; pass --force to overwrite it", p.display());
        }
    }
    out!(
        "{} operation{} in {}:",
        wsdl.operations.len(),
        if wsdl.operations.len() == 1 { "" } else { "s" },
        args.source
    );
    for op in &wsdl.operations {
        let versions: Vec<&str> = op.bindings.iter().map(|b| b.version.name()).collect();
        let b = op.binding(None).expect("an operation has a binding");
        let style = match b.style {
            Style::Document => "document",
            Style::Rpc => "rpc",
        };
        let encoded = if b.encoded {
            ", encoded (not supported)"
        } else {
            ""
        };
        out!(
            "\n{}  (SOAP {}, {style}{encoded}{})",
            op.name,
            versions.join(" + "),
            b.action
                .as_deref()
                .map(|a| format!(", action {a}"))
                .unwrap_or_default()
        );
        if let Some(d) = &op.documentation {
            out!("  {d}");
        }
        out!("  input:");
        out!(
            "{}",
            indent(&wsdl.shape(&wsdl.body_element(&op.input, b.style, &op.name)))
        );
        out!("  output:");
        out!(
            "{}",
            indent(&wsdl.shape(&wsdl.body_element(
                &op.output,
                b.style,
                &format!("{}Response", op.name)
            )))
        );
    }

    std::fs::create_dir_all(args.out.join("wsdl"))?;
    std::fs::create_dir_all(args.out.join("connections"))?;
    std::fs::write(&wsdl_path, &text).with_context(|| wsdl_path.display().to_string())?;
    let first = wsdl
        .operations
        .first()
        .map(|o| o.name.as_str())
        .unwrap_or("Operation");
    let names: Vec<&str> = wsdl.operation_names().collect();
    let conn = format!(
        "# Imported by `ferry import wsdl` from {source}\n\
         # (a copy is in {wsdl_rel}). Operations: {ops}.\n\
         # Call one with a step:\n\
         #   - id: call\n\
         #     soap:\n\
         #       connection: {id}\n\
         #       wsdl: {wsdl_rel}\n\
         #       operation: {first}\n\
         #       body: {{}}\n\
         id: {id}\n\
         base_url: {address}\n",
        source = args.source,
        ops = names.join(", "),
    );
    std::fs::write(&conn_path, conn).with_context(|| conn_path.display().to_string())?;
    say!(
        "\nwrote {} and {}",
        conn_path.display(),
        wsdl_path.display()
    );
    Ok(0)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The service's name in lower case (`StockService` → `stockservice`), else the file's.
fn default_id(wsdl: &Wsdl, source: &str) -> String {
    let from_source = || {
        let last = source
            .split(['?', '#'])
            .next()
            .unwrap_or(source)
            .trim_end_matches('/')
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or("");
        last.trim_end_matches(".wsdl").to_owned()
    };
    let raw = match &wsdl.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => from_source(),
    };
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase()
}
