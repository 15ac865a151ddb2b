//! Every request the server makes on a user's behalf (Agent Cards, probes, A2A calls) goes
//! through [`Outbound`]: destinations that resolve to loopback, private, link-local,
//! unique-local, multicast or unspecified addresses are refused (after resolution, on every
//! redirect hop) unless the operator allows them, bodies are read as a stream up to a cap, and
//! every request has a total deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::Value;

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Time to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an outbound request did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0} is not an http(s) URL")]
    NotHttp(String),
    #[error(
        "{0} is a private, loopback, link-local or otherwise internal address; memesh refuses it (--allow-private-agent-urls opens it)"
    )]
    Private(String),
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} did not answer within {}s", .deadline.as_secs_f64())]
    Deadline { url: String, deadline: Duration },
    #[error("{url} did not send JSON: {source}")]
    NotJson {
        url: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Request(String),
}

/// An address no request on a user's behalf may reach by default.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || is_nat64_internal(v6)
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
}

/// `64:ff9b::/96` embeds an IPv4 address (NAT64); judge the embedded one.
fn is_nat64_internal(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    if s[..6] != [0x64, 0xff9b, 0, 0, 0, 0] {
        return false;
    }
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    is_internal_v4(embedded)
}

/// Resolves names and drops internal addresses (unless allowed); a name left with none fails.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_internal(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(OutboundError::Private(host)) as Box<_>);
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL before it is requested or redirected to: http(s), and not an internal address
/// literal (names are checked when they are resolved).
fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), OutboundError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OutboundError::NotHttp(url.to_string()));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(OutboundError::NotHttp(url.to_string())),
    };
    if !allow_private && literal.is_some_and(is_internal) {
        return Err(OutboundError::Private(url.to_string()));
    }
    Ok(())
}

/// The one client for requests made on a user's behalf.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allow_private: bool,
}

impl Outbound {
    pub fn new(allow_private: bool) -> Outbound {
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(OutboundError::Request("too many redirects".into()))
            } else if let Err(e) = check_url(attempt.url(), allow_private) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default();
        Outbound {
            client,
            allow_private,
        }
    }

    /// GETs `url` and parses its body as JSON: at most `max_bytes`, all within `deadline`.
    pub async fn get_json(
        &self,
        url: &str,
        max_bytes: usize,
        deadline: Duration,
    ) -> Result<Value, OutboundError> {
        self.json(url, None, &[], max_bytes, deadline).await
    }

    /// POSTs `body` as JSON to `url` with `headers` and parses the answer as [`Self::get_json`]
    /// does.
    pub async fn post_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
        max_bytes: usize,
        deadline: Duration,
    ) -> Result<Value, OutboundError> {
        self.json(url, Some(body), headers, max_bytes, deadline)
            .await
    }

    async fn json(
        &self,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        max_bytes: usize,
        deadline: Duration,
    ) -> Result<Value, OutboundError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|_| OutboundError::NotHttp(url.to_owned()))?;
        check_url(&parsed, self.allow_private)?;
        let fetch = async {
            let mut request = match body {
                Some(body) => self.client.post(parsed).json(body),
                None => self.client.get(parsed),
            }
            .header("accept", "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let mut resp = request.send().await.map_err(|e| request_error(url, e))?;
            if !resp.status().is_success() {
                return Err(OutboundError::Status {
                    url: url.to_owned(),
                    status: resp.status().as_u16(),
                });
            }
            let too_large = || OutboundError::TooLarge {
                url: url.to_owned(),
                limit: max_bytes,
            };
            if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(url, e))? {
                if body.len() + chunk.len() > max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body).map_err(|source| OutboundError::NotJson {
                url: url.to_owned(),
                source,
            })
        };
        tokio::time::timeout(deadline, fetch)
            .await
            .map_err(|_| OutboundError::Deadline {
                url: url.to_owned(),
                deadline,
            })?
    }
}

/// A transport error, with the refusal of an internal address told as such.
fn request_error(url: &str, e: reqwest::Error) -> OutboundError {
    let mut cause: Option<&dyn std::error::Error> = Some(&e);
    while let Some(c) = cause {
        if let Some(OutboundError::Private(host)) = c.downcast_ref::<OutboundError>() {
            return OutboundError::Private(host.clone());
        }
        cause = c.source();
    }
    OutboundError::Request(format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_before_and_on_every_redirect() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(check_url(&url("http://127.0.0.1:8080/x"), false).is_err());
        assert!(check_url(&url("http://[::1]/x"), false).is_err());
        assert!(check_url(&url("http://169.254.169.254/latest"), false).is_err());
        assert!(check_url(&url("ftp://example.com/x"), false).is_err());
        assert!(check_url(&url("https://example.com/x"), false).is_ok());
        assert!(check_url(&url("http://127.0.0.1:8080/x"), true).is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused() {
        let outbound = Outbound::new(false);
        let err = outbound
            .get_json("http://localhost:9/card.json", 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Private(_)), "{err}");
    }
}
