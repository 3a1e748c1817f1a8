//! The HTTP server's own limits, tried as an attacker would on a raw socket: a client trickling
//! its headers is cut off after the header-read timeout; a body that does not arrive in time gets
//! 408; connections beyond the cap wait unread until one closes.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(s: &Server) -> TcpStream {
    let addr = s.url.trim_start_matches("http://").to_owned();
    TcpStream::connect(addr).await.expect("connect")
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    within(
        "the server closes the connection",
        stream.read_to_end(&mut out),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn trickled_headers_are_cut_off() {
    let s = start(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = connect(&s).await;
    // Half a request, then nothing: the headers never end.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let s = start(|c| c.limits.body_read_timeout = Duration::from_millis(300)).await;
    let mut stream = connect(&s).await;
    stream
        .write_all(
            format!(
                "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"pro"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_unread() {
    let s = start(|c| {
        c.server.max_connections = 2;
        c.server.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut first = connect(&s).await;
    let mut second = connect(&s).await;
    // Both are served (keep-alive: each keeps its permit afterwards).
    for conn in [&mut first, &mut second] {
        conn.write_all(request).await.expect("write");
        let mut buf = [0u8; 512];
        let n = within("a served request", conn.read(&mut buf))
            .await
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let mut third = connect(&s).await;
    third.write_all(request).await.expect("write");
    // Prove the server is live and answered a request sent after the third's...
    second.write_all(request).await.expect("write");
    let mut buf = [0u8; 512];
    within("a served request", second.read(&mut buf))
        .await
        .expect("read");
    // ...while no permit was ever released: the third was not even accepted.
    match third.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the third connection was served over the cap: {other:?}"),
    }
    drop(first);
    let n = within("the third is served once a connection closes", async {
        third.readable().await.expect("readable");
        third.read(&mut buf).await
    })
    .await
    .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
