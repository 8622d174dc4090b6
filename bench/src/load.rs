//! The warm-load client: GETs over keep-alive connections with nothing between the socket
//! and the response but `httparse`. A general-purpose client (reqwest) spent about as much
//! CPU per request as bare Node's whole server (25 µs); on a 2-core machine that CPU comes
//! out of the server under test, so, like wrk, this one stays out of the way.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{gather, Run};

/// `connections` keep-alive connections, each sending its next GET when the last
/// response is complete, for `seconds`.
pub async fn get_load(url: &str, connections: usize, seconds: u64) -> Run {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (host, request) = (host.to_owned(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let Ok(mut stream) = TcpStream::connect(&host).await else {
                return (lat, 1);
            };
            let _ = stream.set_nodelay(true);
            let mut buf = Vec::with_capacity(16 << 10);
            while Instant::now() < deadline {
                let start = Instant::now();
                match exchange(&mut stream, &request, &mut buf).await {
                    Ok(true) => lat.push(start.elapsed()),
                    Ok(false) => errors += 1,
                    // The connection is unusable: count it and stop this client.
                    Err(_) => return (lat, errors + 1),
                }
            }
            (lat, errors)
        }));
    }
    gather(tasks, seconds).await
}

/// One request and its whole response; `Ok(true)` for a 2xx.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let malformed =
        |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    stream.write_all(request).await?;
    buf.clear();
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(malformed("connection closed mid-response"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(malformed("unparsable response")),
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .ok_or_else(|| malformed("response without content-length"))?;
        let ok = response.code.is_some_and(|c| (200..300).contains(&c));
        while buf.len() < head + length {
            if stream.read_buf(buf).await? == 0 {
                return Err(malformed("connection closed mid-body"));
            }
        }
        return Ok(ok);
    }
}
