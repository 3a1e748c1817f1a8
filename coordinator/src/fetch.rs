//! Outgoing HTTP with an SSRF guard: fetching `input_image` URLs and delivering webhooks.
//!
//! Unless `allow_private` is set, the host name is resolved here, *every* address is checked
//! against private, loopback, link-local, unique-local, CGNAT, multicast and reserved ranges, and
//! the connection is pinned to the checked addresses (so a DNS answer that changes between check
//! and connect cannot smuggle in a private address). Redirects are followed by hand, at most
//! `MAX_REDIRECTS`, and each target is checked the same way. Bodies are read with a size limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_LENGTH, HeaderMap, LOCATION};
use reqwest::redirect::Policy;
use reqwest::{Client, Method, StatusCode, Url};

/// Redirect hops followed for a GET.
pub const MAX_REDIRECTS: usize = 3;

/// Why an outgoing request was refused or failed. Messages are shown to clients (for
/// `input_image`), so they say what to change and never echo response bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("must be an http:// or https:// URL with a host ({0})")]
    BadUrl(String),
    #[error("resolves to {0}, a private, loopback, link-local or reserved address: refused")]
    PrivateAddress(IpAddr),
    #[error("host {0} could not be resolved")]
    Unresolvable(String),
    /// The detail (refused, reset, TLS) goes to the log only: echoing it would let a client probe
    /// which hosts and ports answer, through this server.
    #[error("could not be fetched (no connection or no valid response)")]
    Connect(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
    #[error("is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Refuses `ip` unless it is public or `allow_private` is set: the address policy of every
/// outgoing request, and of webhook URLs whose host is an IP literal at submit time.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), FetchError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(FetchError::PrivateAddress(ip))
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let blocked = a == 0                                  // "this network"
        || a == 10                                        // private
        || (a == 100 && (64..=127).contains(&b))          // CGNAT 100.64/10
        || a == 127                                       // loopback
        || (a == 169 && b == 254)                         // link-local
        || (a == 172 && (16..=31).contains(&b))           // private
        || (a == 192 && b == 0 && c == 0)                 // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                 // TEST-NET-1
        || (a == 192 && b == 168)                         // private
        || (a == 192 && b == 88 && c == 99)               // 6to4 relay anycast (RFC 7526)
        || ip == Ipv4Addr::new(168, 63, 129, 16)          // Azure's host endpoint (metadata, DNS)
        || (a == 198 && (18..=19).contains(&b))           // benchmarking
        || (a == 198 && b == 51 && c == 100)              // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)               // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !blocked
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Addresses that embed an IPv4 address are judged by it: mapped (::ffff:a.b.c.d),
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [hi, lo] = [s[6], s[7]];
        return is_public_v4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ));
    }
    if s[0] == 0x2002 {
        let [hi, lo] = [s[1], s[2]];
        return is_public_v4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ));
    }
    let blocked = s[..6] == [0, 0, 0, 0, 0, 0]            // ::, ::1, IPv4-compatible
        || (s[0] & 0xfe00) == 0xfc00                      // unique-local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80                      // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0                      // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00                      // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8)             // documentation
        || (s[0] == 0x2001 && s[1] == 0)                  // Teredo 2001::/32 (tunnels to IPv4)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)  // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]); // discard-only 100::/64
    !blocked
}

/// Checks the URL's scheme and host, resolves it and checks every address. Returns the host name
/// (when it is not an IP literal) with the addresses to pin the connection to.
async fn resolve_checked(
    url: &Url,
    allow_private: bool,
) -> Result<Option<(String, Vec<SocketAddr>)>, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl(format!("scheme {:?}", url.scheme())));
    }
    let host = url
        .host_str()
        .ok_or_else(|| FetchError::BadUrl("no host".into()))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchError::BadUrl("no port".into()))?;
    // IP literals (including bracketed IPv6) are checked as they are.
    if let Some(ip) = literal_ip(host) {
        return check_address(ip, allow_private).map(|()| None);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| FetchError::Unresolvable(host.to_owned()))?
        .collect();
    if addrs.is_empty() {
        return Err(FetchError::Unresolvable(host.to_owned()));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(FetchError::PrivateAddress(bad.ip()));
    }
    Ok(Some((host.to_owned(), addrs)))
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A client that connects only to the checked addresses and never follows redirects itself.
async fn pinned_client(
    url: &Url,
    allow_private: bool,
    timeout: Duration,
) -> Result<Client, FetchError> {
    let mut builder = Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("kontext-coordinator/", env!("CARGO_PKG_VERSION")));
    if let Some((host, addrs)) = resolve_checked(url, allow_private).await? {
        builder = builder.resolve_to_addrs(&host, &addrs);
    }
    builder
        .build()
        .map_err(|e| FetchError::Connect(format!("building the HTTP client: {e}")))
}

fn parse_url(raw: &str) -> Result<Url, FetchError> {
    Url::parse(raw).map_err(|e| FetchError::BadUrl(e.to_string()))
}

fn send_error(e: &reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(timeout)
    } else {
        // The chain names the cause (refused, TLS, reset) without any response content.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        tracing::info!(error = %text, "fetching a URL failed");
        FetchError::Connect(text)
    }
}

/// GET `raw_url` (following checked redirects) and read at most `max_bytes` of its body.
pub async fn fetch(
    raw_url: &str,
    max_bytes: u64,
    timeout: Duration,
    allow_private: bool,
) -> Result<Bytes, FetchError> {
    let work = async {
        let mut url = parse_url(raw_url)?;
        for _ in 0..=MAX_REDIRECTS {
            let client = pinned_client(&url, allow_private, timeout).await?;
            let mut response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| send_error(&e, timeout))?;
            let status = response.status();
            if status.is_redirection() {
                let next =
                    location(response.headers()).ok_or(FetchError::Status(status.as_u16()))?;
                url = url
                    .join(&next)
                    .map_err(|e| FetchError::BadUrl(format!("redirect target: {e}")))?;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            if content_length(response.headers()).is_some_and(|n| n > max_bytes) {
                return Err(FetchError::TooLarge(max_bytes));
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| send_error(&e, timeout))?
            {
                if (body.len() + chunk.len()) as u64 > max_bytes {
                    return Err(FetchError::TooLarge(max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body.freeze());
        }
        Err(FetchError::TooManyRedirects)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// POST `body` to `raw_url` with `headers` (no redirects followed); returns the status.
pub async fn post(
    raw_url: &str,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    allow_private: bool,
) -> Result<StatusCode, FetchError> {
    let work = async {
        let url = parse_url(raw_url)?;
        let client = pinned_client(&url, allow_private, timeout).await?;
        let response = client
            .request(Method::POST, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| send_error(&e, timeout))?;
        Ok(response.status())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// Checks a URL without connecting: scheme, host, and IP literals (`check_address`). Host names
/// are checked only when resolved, at delivery.
pub fn check_url_syntax(raw: &str, allow_private: bool) -> Result<(), FetchError> {
    let url = parse_url(raw)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl(format!("scheme {:?}", url.scheme())));
    }
    let host = url
        .host_str()
        .ok_or_else(|| FetchError::BadUrl("no host".into()))?;
    match literal_ip(host) {
        Some(ip) => check_address(ip, allow_private),
        None => Ok(()),
    }
}

fn location(headers: &HeaderMap) -> Option<String> {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal ip")
    }

    #[test]
    fn connection_details_stay_out_of_the_message() {
        let e = FetchError::Connect("error sending request: tcp connect error: Connection refused (os error 111) to 93.184.216.34:22".into());
        let msg = e.to_string();
        assert!(!msg.contains("refused") && !msg.contains(":22"), "{msg}");
    }

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for s in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            "2001:db8::1",
            "::127.0.0.1",
            "fec0::1",
            "168.63.129.16",
            "192.88.99.1",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn ordinary_addresses_are_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(s)), "{s} must be allowed");
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_private_hosts_are_refused() {
        for url in [
            "http://127.0.0.1:9/x.png",
            "http://[::1]/x",
            "http://10.0.0.1/x",
        ] {
            let err = fetch(url, 1024, Duration::from_secs(2), false)
                .await
                .expect_err(url);
            assert!(matches!(err, FetchError::PrivateAddress(_)), "{url}: {err}");
        }
        let err = fetch("http://localhost:9/x", 1024, Duration::from_secs(2), false)
            .await
            .expect_err("localhost resolves to loopback");
        assert!(matches!(err, FetchError::PrivateAddress(_)), "{err}");
        let err = fetch("file:///etc/passwd", 1024, Duration::from_secs(2), true)
            .await
            .expect_err("not http");
        assert!(matches!(err, FetchError::BadUrl(_)), "{err}");
    }

    #[test]
    fn webhook_urls_are_checked_syntactically() {
        assert!(check_url_syntax("https://hooks.example.com/x", false).is_ok());
        assert!(check_url_syntax("http://192.168.0.1/x", false).is_err());
        assert!(check_url_syntax("http://192.168.0.1/x", true).is_ok());
        assert!(check_url_syntax("ftp://example.com/x", true).is_err());
    }
}
