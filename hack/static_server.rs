//! The scrape path's limit: a minimal hyper 1 server answering every request
//! with the same bytes from a static buffer (a file read once at start), on
//! the agent's runtime settings (tokio, two workers). `hack/bench.sh` serves
//! the agent's own `/metrics` body with it, as the baseline the agent's
//! scrape throughput is compared to.
//!
//! ```text
//! cargo run --release --example static-server -- --listen 127.0.0.1:19500 --body metrics.txt
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Serves one file's bytes on every path.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:19500")]
    listen: SocketAddr,
    /// The body to serve.
    #[arg(long)]
    body: PathBuf,
    /// Content-Type of the body.
    #[arg(long, default_value = "text/plain; version=0.0.4; charset=utf-8")]
    content_type: String,
    /// Content-Encoding of the body (`gzip` for a gzipped one), if any.
    #[arg(long)]
    content_encoding: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = Bytes::from(std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?);
    let content_type = HeaderValue::from_str(&args.content_type).context("--content-type")?;
    let encoding =
        args.content_encoding.as_deref().map(HeaderValue::from_str).transpose().context("--content-encoding")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("static server listening on http://{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (body, content_type, encoding) = (body.clone(), content_type.clone(), encoding.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
                    if let Some(encoding) = &encoding {
                        response.headers_mut().insert(header::CONTENT_ENCODING, encoding.clone());
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
