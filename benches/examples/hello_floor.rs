//! The noise floor for benches/mock_vs_wiremock.sh: a trivial HTTP/1.1 keep-alive server on one
//! current-thread tokio runtime that reads each request (head and `content-length` body) and
//! answers with a fixed 200 JSON body, doing no other work. Whatever tail latency it shows at a
//! given rate is the loopback, scheduler and VM's, not a server's. Prints its URL on the first
//! stdout line and serves until killed.
//!
//! Hand-rolled on tokio alone (no hyper) so that the bench crate needs no new dependency; it
//! understands only what oha and wrk send (no chunked bodies, no pipelining beyond what the
//! buffer holds).

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = r#"{"id":"chatcmpl-0","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"{\"tags\":[\"cat\",\"sky\",\"tree\"]}"},"finish_reason":"stop"}]}"#;

/// The byte length of the request head (through the blank line) and its `content-length`, once
/// the whole head is in `buf`.
fn head(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let length = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Some((end, length))
}

async fn serve(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete request in the buffer, then read more.
        while let Some((head_len, body_len)) = head(&buf) {
            if buf.len() < head_len + body_len {
                break;
            }
            buf.drain(..head_len + body_len);
            stream.write_all(response).await?;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{}", listener.local_addr()?);
        let _ = out.flush();
        drop(out);
        let response: &'static [u8] = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
        .into_bytes()
        .leak();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = serve(stream, response).await;
            });
        }
    })
}
