//! Every request the server makes on a user's behalf (Agent Cards, probes, A2A calls) goes
//! through [`Outbound`]: only globally routable unicast destinations that are not this host's
//! own addresses are reached (checked after resolution and on every redirect hop) unless the
//! operator allows private ones, no proxy from the environment is used, bodies are read as a
//! stream up to a cap, and every request has a total deadline.

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

/// Whether `ip` is globally routable unicast space, the only space a request on a user's behalf
/// may reach by default: an allowlist built from IANA's IPv4 and IPv6 special-purpose address
/// registries (every block there whose "globally reachable" is false is refused, and so is all
/// IPv6 outside 2000::/3, multicast, and the reserved 240.0.0.0/4). An IPv4 address carried
/// inside an IPv6 one (mapped, IPv4-compatible, NAT64, 6to4, Teredo) is judged as itself.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

/// IPv4 blocks that are not globally reachable (RFC 6890 and the registry since), as
/// (network, prefix length). 192.0.0.0/24 is refused whole, its two anycast exceptions included.
const V4_SPECIAL: [([u8; 4], u8); 15] = [
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGN)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata services)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast address
];

fn in_v4(ip: Ipv4Addr, (net, len): ([u8; 4], u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_global_v4(v4: Ipv4Addr) -> bool {
    !V4_SPECIAL.iter().any(|&block| in_v4(v4, block))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// The IPv4 address in the low 32 bits of `v6`.
fn low_v4(v6: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from(u128::from(v6) as u32)
}

fn is_global_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    // Forms that carry an IPv4 address: judged by it.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_global_v4(v4); // ::ffff:0:0/96
    }
    if in_v6(v6, [0; 8], 96) {
        // ::/96: the unspecified and loopback addresses, and the deprecated IPv4-compatible form.
        return !v6.is_unspecified() && !v6.is_loopback() && is_global_v4(low_v4(v6));
    }
    if in_v6(v6, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return is_global_v4(low_v4(v6)); // NAT64 well-known prefix
    }
    if in_v6(v6, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4: the IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_global_v4(v4);
    }
    if in_v6(v6, [0x2001, 0, 0, 0, 0, 0, 0, 0], 32) {
        // Teredo: the server's IPv4 address in bits 32..64, the client's inverted in the last 32.
        let server = Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8);
        let client = Ipv4Addr::from(!(u128::from(v6) as u32));
        return is_global_v4(server) && is_global_v4(client);
    }
    // Global unicast is 2000::/3; everything else (ULA fc00::/7, link-local fe80::/10,
    // site-local fec0::/10, multicast, discard 100::/64, NAT64 local-use 64:ff9b:1::/48, …) is not.
    if !in_v6(v6, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return false;
    }
    // Inside 2000::/3: IETF protocol assignments 2001::/23 (but for the registry's globally
    // reachable anycast and ORCHIDv2 / drone blocks), documentation 2001:db8::/32 and 3fff::/20.
    let globally_reachable_in_2001_23 = [
        ([0x2001, 0x1, 0, 0, 0, 0, 0, 0x1], 128),
        ([0x2001, 0x1, 0, 0, 0, 0, 0, 0x2], 128),
        ([0x2001, 0x1, 0, 0, 0, 0, 0, 0x3], 128),
        ([0x2001, 0x3, 0, 0, 0, 0, 0, 0], 32),
        ([0x2001, 0x4, 0x112, 0, 0, 0, 0, 0], 48),
        ([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
        ([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),
    ];
    if in_v6(v6, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        return globally_reachable_in_2001_23
            .iter()
            .any(|&(net, len)| in_v6(v6, net, len));
    }
    !(in_v6(v6, [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32)
        || in_v6(v6, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20))
}

/// The addresses of this host's own interfaces, read afresh (they can change while memesh runs).
/// A service listening on the host's public address is as internal as one on loopback.
fn host_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.iter().map(if_addrs::Interface::ip).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; refusing none of them");
            Vec::new()
        }
    }
}

/// Whether a request on a user's behalf may go to `ip` (`allow_private`: the operator opened
/// every destination, for labs and tests).
fn permitted(ip: IpAddr, allow_private: bool, own: &[IpAddr]) -> bool {
    allow_private || (is_global(ip) && !own.contains(&canonical(ip)))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (how interfaces list it).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
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
            let own = if allow_private {
                Vec::new()
            } else {
                host_addresses()
            };
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| permitted(a.ip(), allow_private, &own))
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
    if let Some(ip) = literal
        && !allow_private
        && !permitted(ip, false, &host_addresses())
    {
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
    /// The guarded client. It never uses the environment's proxy settings (`HTTP(S)_PROXY`,
    /// `ALL_PROXY`): a proxy resolves names itself, so the guard could not see where a request
    /// goes. `proxy` (the operator's `--agent-proxy`) sends every request through that proxy
    /// instead; literal addresses in URLs are still checked, names are then the proxy's to
    /// resolve, so the proxy needs an egress policy of its own. Building the client can fail;
    /// the server then does not start (there is no unguarded fallback).
    pub fn new(allow_private: bool, proxy: Option<&str>) -> anyhow::Result<Outbound> {
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(OutboundError::Request("too many redirects".into()))
            } else if let Err(e) = check_url(attempt.url(), allow_private) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(proxy) = proxy {
            let proxy = reqwest::Proxy::all(proxy)
                .map_err(|e| anyhow::anyhow!("--agent-proxy {proxy:?}: {e}"))?;
            builder = builder.proxy(proxy);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the outbound HTTP client: {e}"))?;
        Ok(Outbound {
            client,
            allow_private,
        })
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

    /// Every special-purpose block the guard must refuse, and globally routable addresses on
    /// either side of them, including IPv4 addresses inside the IPv6 forms that carry one.
    #[test]
    fn only_globally_routable_unicast_is_reachable() {
        let refused = [
            // IPv4 special-purpose registry
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.9",
            "192.0.2.1",
            "192.0.2.2",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "250.1.2.3",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "febf::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "2001:10::1",
            "2001:100::1",
            "64:ff9b:1::1",
            "5f00::1",
            "4000::1",
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4, Teredo
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.0.2.2",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::c000:202",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2002:c000:0202::1",
            // Teredo with a private server, and with the client 127.0.0.1 (inverted: 80ff:fffe)
            "2001:0:a00:1::1",
            "2001:0:808:808:0:0:80ff:fffe",
        ];
        for ip in refused {
            assert!(!is_global(ip.parse().unwrap()), "{ip} must be refused");
        }
        let reachable = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "99.255.255.255",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.255",
            "192.0.3.1",
            "192.88.98.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:4860:4860::8888",
            "2001:1::1",
            "2001:3::1",
            "2001:20::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo with public server 8.8.8.8 and public client 1.1.1.1 (inverted: fefe:fefe)
            "2001:0:808:808:0:0:fefe:fefe",
        ];
        for ip in reachable {
            assert!(is_global(ip.parse().unwrap()), "{ip} must be reachable");
        }
    }

    /// The host's own addresses are refused even when globally routable.
    #[test]
    fn own_addresses_are_refused() {
        let own: Vec<IpAddr> = vec!["8.8.4.4".parse().unwrap(), "2a00::5".parse().unwrap()];
        assert!(!permitted("8.8.4.4".parse().unwrap(), false, &own));
        assert!(!permitted("::ffff:8.8.4.4".parse().unwrap(), false, &own));
        assert!(!permitted("2a00::5".parse().unwrap(), false, &own));
        assert!(permitted("8.8.8.8".parse().unwrap(), false, &own));
        assert!(
            permitted("8.8.4.4".parse().unwrap(), true, &own),
            "allowed by the operator"
        );
    }

    #[test]
    fn urls_are_checked_before_and_on_every_redirect() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(check_url(&url("http://127.0.0.1:8080/x"), false).is_err());
        assert!(check_url(&url("http://[::1]/x"), false).is_err());
        assert!(check_url(&url("http://169.254.169.254/latest"), false).is_err());
        assert!(check_url(&url("http://198.18.0.1/x"), false).is_err());
        assert!(check_url(&url("http://[2002:a00:1::1]/x"), false).is_err());
        assert!(check_url(&url("ftp://example.com/x"), false).is_err());
        assert!(check_url(&url("https://example.com/x"), false).is_ok());
        assert!(check_url(&url("http://127.0.0.1:8080/x"), true).is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused() {
        let outbound = Outbound::new(false, None).unwrap();
        let err = outbound
            .get_json("http://localhost:9/card.json", 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Private(_)), "{err}");
    }

    #[test]
    fn a_bad_proxy_fails_the_build() {
        assert!(Outbound::new(false, Some("::not a url::")).is_err());
    }
}
