//! A local S3-compatible server for the object-store tests: moto's server (PyPI `moto[server]`,
//! installed into the test venv by scripts/test.sh) on a free loopback port, stopped on drop;
//! and a throttling proxy in front of it that answers the first PUTs with S3's 503 SlowDown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Starts a server that accepts any credentials.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`, which
    /// makes it check credentials and answer 403 to unknown keys).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (pip install 'moto[server]' in the test venv; scripts/test.sh does)");
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(moto.address()).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address())
    }

    /// The environment a `bamflow` process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("AWS_ENDPOINT_URL".to_owned(), self.endpoint())])
        .collect()
    }

    /// A client of `bucket` on this server, as bamflow makes them.
    pub fn bucket(&self, bucket: &str) -> bamflow_store::Bucket {
        let options: Vec<(String, String)> = vec![
            ("endpoint".into(), self.endpoint()),
            ("access_key_id".into(), "testing".into()),
            ("secret_access_key".into(), "testing".into()),
            ("region".into(), "us-east-1".into()),
        ];
        bamflow_store::Bucket::connect(bucket, &options, Arc::new(bamflow_store::Unobserved))
            .expect("connects")
    }

    pub fn create_bucket(&self, name: &str) {
        let (status, body) = request(&self.address(), "PUT", &format!("/{name}"));
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// The keys under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = request(
            &self.address(),
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        );
        assert_eq!(status, 200, "{body}");
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect();
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let (status, body) = request(&self.address(), "GET", &format!("/{bucket}?uploads"));
        assert_eq!(status, 200, "{body}");
        body.matches("<UploadId>").count()
    }

    /// Copies the objects under `prefix` into the folder `into` (by last key segment).
    pub fn download(&self, bucket: &str, prefix: &str, into: &std::path::Path) {
        std::fs::create_dir_all(into).unwrap();
        let client = self.bucket(bucket);
        for key in self.keys(bucket, prefix) {
            let body = client.get(&key).unwrap().expect("listed object");
            let name = key.rsplit('/').next().unwrap();
            std::fs::write(into.join(name), body).unwrap();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unsigned HTTP/1.0 request without a body (moto takes bucket-level ones without
/// credentials).
fn request(address: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        String::from_utf8_lossy(&response[split..]).into_owned(),
    )
}

/// Forwards HTTP/1.1 requests to `upstream`, answering the first `throttle` PUT requests
/// with `503 SlowDown` instead, as S3 does under load. One request per upstream connection.
pub struct ThrottlingProxy {
    port: u16,
    pub throttled: Arc<AtomicUsize>,
}

impl ThrottlingProxy {
    pub fn start(upstream: String, throttle: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let throttled = Arc::new(AtomicUsize::new(0));
        let puts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&throttled);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, puts, counted) =
                    (upstream.clone(), Arc::clone(&puts), Arc::clone(&counted));
                std::thread::spawn(move || {
                    serve(client, &upstream, &puts, throttle, &counted);
                });
            }
        });
        Self { port, throttled }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    puts: &AtomicUsize,
    throttle: usize,
    throttled: &AtomicUsize,
) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
                if name.eq_ignore_ascii_case("connection") {
                    continue;
                }
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let is_put = head.starts_with(b"PUT ");
        if is_put && puts.fetch_add(1, Ordering::SeqCst) < throttle {
            throttled.fetch_add(1, Ordering::SeqCst);
            let text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            continue;
        }
        let Ok(mut server) = TcpStream::connect(upstream) else {
            return;
        };
        if server.write_all(&head).is_err() || server.write_all(&body).is_err() {
            return;
        }
        let mut response = Vec::new();
        let _ = server.read_to_end(&mut response);
        // The upstream closed after one response; so does the client connection.
        let _ = client.write_all(&response);
        return;
    }
}
