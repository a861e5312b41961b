//! The SSRF guard: which network addresses a request may reach.
//!
//! A URL the operator wrote (a connection's `base_url`, a literal `url:`) goes where it says.
//! A URL built from data (a templated `url:`) must not reach loopback, private, link-local or
//! cloud-metadata addresses unless the operator allows the network (`--allow-network CIDR`).
//! The check runs on the addresses DNS returns, through the resolver the connection then uses
//! (so a name cannot resolve to a public address for the check and a private one for the
//! connection), and again on every redirect.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

/// A request refused by the guard; found in a reqwest error's source chain.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused to connect to {host} ({ip}, a {why} address): URLs built from data may not reach internal networks; allow it with --allow-network"
)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

/// A redirect to another host refused because the request carries a connection's
/// credentials in headers that would travel with it.
#[derive(Debug, thiserror::Error)]
#[error(
    "redirected from {from} to {to}: the connection's credentials are not sent to another host; set `redirects: none` to read the `Location` instead"
)]
pub struct LeftHost {
    pub from: String,
    pub to: String,
}

/// Why `ip` is internal, or `None` for a public address.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = [seg[6].to_be_bytes(), seg[7].to_be_bytes()];
                return internal_v4(Ipv4Addr::new(a[0], a[1], b[0], b[1]));
            }
            if v6 == Ipv6Addr::LOCALHOST {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud-metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol")
    } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
        Some("benchmarking")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// Addresses that templated URLs may reach after all.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    allow: Vec<IpNet>,
    /// Clients with a `redirects:` setting other than the default, or pinned to their first
    /// host, built on first use and kept (a client owns a connection pool), keyed by
    /// (kind, max redirects).
    redirect_clients: Arc<Mutex<HashMap<(ClientKind, usize), reqwest::Client>>>,
}

impl NetPolicy {
    pub fn new(allow: Vec<IpNet>) -> NetPolicy {
        NetPolicy {
            allow,
            redirect_clients: Arc::default(),
        }
    }

    /// The shared client ([`client`] or, when `guarded`, [`guarded_client`]) that follows at
    /// most `max` redirects.
    pub fn client_with_redirects(&self, guarded: bool, max: usize) -> reqwest::Client {
        let kind = match guarded {
            true => ClientKind::Guarded,
            false => ClientKind::Plain,
        };
        self.cached(kind, max)
    }

    /// [`client`] following at most `max` redirects, none to another host: for requests
    /// that carry credentials in headers a client does not drop on such a redirect.
    pub fn pinned_client(&self, max: usize) -> reqwest::Client {
        self.cached(ClientKind::Pinned, max)
    }

    fn cached(&self, kind: ClientKind, max: usize) -> reqwest::Client {
        let mut clients = self
            .redirect_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        clients
            .entry((kind, max))
            .or_insert_with(|| {
                // A fresh policy without this cache: the client holds it, and a client inside
                // its own policy's cache would never be freed.
                let policy = Arc::new(NetPolicy::new(self.allow.clone()));
                match kind {
                    ClientKind::Guarded => guarded_client_with_redirects(policy, max),
                    ClientKind::Plain => redirecting_client(policy, max, false),
                    ClientKind::Pinned => redirecting_client(policy, max, true),
                }
            })
            .clone()
    }

    /// `--allow-network` values: CIDRs (`10.1.0.0/16`) or single addresses.
    pub fn parse_allow(values: &[String]) -> Result<Vec<IpNet>, String> {
        values
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<IpNet>()
                    .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("invalid network `{v}`: expected a CIDR such as 10.1.0.0/16 or an address")
                    })
            })
            .collect()
    }

    /// `Err` with the reason when `ip` is internal and not allowed.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match internal(ip) {
            Some(why) if !self.allow.iter().any(|n| n.contains(&ip)) => Err(Refused {
                host: host.to_owned(),
                ip,
                why,
            }),
            _ => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP address (names are checked when they resolve).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(&ip.to_string(), IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }
}

/// Resolves names and drops the answer when any address is internal and not allowed.
struct GuardedResolver {
    policy: Arc<NetPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy.check(&host, a.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        // A `Referer` on a redirect would carry the first URL, query credentials included
        // (`auth: { api_key: { query } }`), to the next host.
        .referer(false)
        .pool_max_idle_per_host(256)
        .connect_timeout(Duration::from_secs(10))
}

/// The client for operator-written URLs. A redirect to another host that is an internal IP
/// address is refused (a public API cannot bounce a request into the private network).
pub fn client(policy: Arc<NetPolicy>) -> reqwest::Client {
    client_with_redirects(policy, crate::flow::model::DEFAULT_REDIRECTS)
}

/// [`client`] following at most `max` redirects (0: a 3xx is the answer).
pub fn client_with_redirects(policy: Arc<NetPolicy>, max: usize) -> reqwest::Client {
    redirecting_client(policy, max, false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKind {
    Plain,
    Guarded,
    Pinned,
}

fn redirecting_client(policy: Arc<NetPolicy>, max: usize, pinned: bool) -> reqwest::Client {
    builder()
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if max == 0 {
                return attempt.stop();
            }
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            let first = attempt.previous().first().and_then(|u| u.host_str());
            if attempt.url().host_str() != first {
                if pinned {
                    let from = first.unwrap_or("").to_owned();
                    let to = attempt.url().host_str().unwrap_or("").to_owned();
                    return attempt.error(LeftHost { from, to });
                }
                if let Err(e) = policy.check_url(attempt.url()) {
                    return attempt.error(e);
                }
            }
            attempt.follow()
        }))
        .build()
        .expect("the HTTP client builds with static settings")
}

/// The client for URLs built from data: every address it connects to, and every redirect,
/// is checked.
pub fn guarded_client(policy: Arc<NetPolicy>) -> reqwest::Client {
    guarded_client_with_redirects(policy, crate::flow::model::DEFAULT_REDIRECTS)
}

/// [`guarded_client`] following at most `max` redirects (0: a 3xx is the answer).
pub fn guarded_client_with_redirects(policy: Arc<NetPolicy>, max: usize) -> reqwest::Client {
    let redirect_policy = policy.clone();
    builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if max == 0 {
                return attempt.stop();
            }
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            match redirect_policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        }))
        .build()
        .expect("the HTTP client builds with static settings")
}

/// The guard's refusal inside a reqwest error, if that is what failed.
pub fn refusal(e: &reqwest::Error) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r.to_string());
        }
        if let Some(r) = s.downcast_ref::<LeftHost>() {
            return Some(r.to_string());
        }
        src = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised_in_every_spelling() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud-metadata"),
            ("169.254.1.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud-metadata"),
            ("64:ff9b::a00:1", "private"),
        ] {
            assert_eq!(internal(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(internal(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_let_internal_addresses_through() {
        let allow = NetPolicy::parse_allow(&["10.1.0.0/16, 127.0.0.1".into()]).unwrap();
        let p = NetPolicy::new(allow);
        assert!(p.check("a", "10.1.9.9".parse().unwrap()).is_ok());
        assert!(p.check("a", "127.0.0.1".parse().unwrap()).is_ok());
        let e = p.check("db", "10.2.0.1".parse().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("db (10.2.0.1, a private address)"),
            "{e}"
        );
        assert!(NetPolicy::parse_allow(&["10.0.0.0/33".into()]).is_err());
        let url = reqwest::Url::parse("http://[::1]:8080/x").unwrap();
        assert!(NetPolicy::default().check_url(&url).is_err());
        let url = reqwest::Url::parse("http://example.com/x").unwrap();
        assert!(NetPolicy::default().check_url(&url).is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let client = guarded_client(Arc::new(NetPolicy::default()));
        let e = client.get("http://localhost:9/").send().await.unwrap_err();
        let why = refusal(&e).expect("refused by the guard");
        assert!(
            why.contains("localhost") && why.contains("loopback"),
            "{why}"
        );
    }
}
