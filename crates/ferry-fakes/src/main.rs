//! `ferry-fakes`: the examples' business systems on one port (default 127.0.0.1:4010, where
//! the examples' connection files point). Prints one line per request received.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Stand-ins for the CRM, mailing list, ERP and warehouse of Ferry's examples"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010", env = "FERRY_FAKES_LISTEN")]
    listen: SocketAddr,
    /// Do not print each request.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let fakes = match ferry_fakes::Fakes::start(args.listen, args.quiet).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry-fakes: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    eprintln!(
        "ferry-fakes listening on {} (crm: /crm, mailer: /mailer/graphql, erp: /erp/soap?wsdl, warehouse: /warehouse/import, log: /_received)",
        fakes.url()
    );
    tokio::select! {
        _ = fakes.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
