//! The load driver: a minimal HTTP/1.1 keep-alive client and the loop that runs one scenario
//! at one concurrency, recording each response's latency.
//!
//! Owns: sending requests and timing them. Must never: run in the server's process (the
//! server's CPU is measured alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Row;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// One request of a scenario.
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub bearer: Option<Arc<String>>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(path: String, bearer: &Arc<String>) -> Self {
        Request { method: "GET", path, bearer: Some(bearer.clone()), body: None }
    }

    pub fn post(path: String, bearer: &Arc<String>, body: &serde_json::Value) -> Self {
        Request { method: "POST", path, bearer: Some(bearer.clone()), body: Some(body.to_string().into_bytes()) }
    }

    /// The request as HTTP/1.1 bytes (keep-alive; every scenario states a purpose).
    fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        let _ =
            write!(out, "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Purpose: customer_service\r\n", self.method, self.path);
        if let Some(t) = &self.bearer {
            let _ = write!(out, "Authorization: Bearer {t}\r\n");
        }
        if let Some(b) = &self.body {
            let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = &self.body {
            out.extend_from_slice(b);
        }
    }
}

pub type MakeRequest = Arc<dyn Fn(usize) -> Request + Send + Sync>;

/// A minimal HTTP/1.1 keep-alive client: the load driver shares the machine with the server,
/// so it must cost as little as possible (a general-purpose client costs several times more
/// per request than the server's no-work route). Returns the response status.
pub struct Connection {
    addr: std::net::SocketAddr,
    stream: Option<tokio::net::TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Connection { addr, stream: None, out: Vec::with_capacity(1024), buf: Vec::with_capacity(64 * 1024) }
    }

    pub async fn send(&mut self, request: &Request) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let result = async {
            if self.stream.is_none() {
                let s = tokio::net::TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let stream = self.stream.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
            request.encode(&mut self.out);
            stream.write_all(&self.out).await?;
            self.buf.clear();
            let (status, total) = loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| std::io::ErrorKind::InvalidData)?;
                    let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok());
                    let length = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                    });
                    match (status, length) {
                        (Some(s), Some(l)) => break (s, end + 4 + l),
                        _ => return Err(std::io::ErrorKind::InvalidData.into()),
                    }
                }
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            };
            while self.buf.len() < total {
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok(status)
        }
        .await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

pub async fn drive(
    scenario: &'static str,
    addr: std::net::SocketAddr,
    concurrency: usize,
    seconds: f64,
    make: MakeRequest,
    ok: u16,
) -> Row {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = worker;
            while Instant::now() < deadline {
                let request = make(i);
                let started = Instant::now();
                match conn.send(&request).await {
                    Ok(status) if status == ok => lat.push(started.elapsed()),
                    _ => errors += 1,
                }
                i += concurrency;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort();
    Row {
        scenario,
        concurrency,
        requests: all.len(),
        errors,
        per_second: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        p999_ms: percentile(&all, 0.999),
        server: None,
    }
}
