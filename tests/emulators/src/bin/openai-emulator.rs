//! `openai-emulator`: the OpenAI Chat Completions emulator as a process, for the Python
//! conformance suite and `make bench`. Prints `listening on http://ADDR` once bound.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use llmgw_emulators::{Options, serve};

#[derive(Parser)]
#[command(about = "Emulates the OpenAI Chat Completions API on a local port")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// The key clients must send as `Authorization: Bearer <key>`; any key when unset.
    #[arg(long, env = "EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Do not record requests for `GET /_emu/requests` (for benchmarks).
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let opts = Options {
        api_key: args.api_key,
        record: !args.no_record,
    };
    serve(listener, opts).await
}
