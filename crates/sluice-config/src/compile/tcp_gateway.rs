//! `[[gateway.tcp]]`: timeouts, the global cap, the stream error, which
//! directions are throttled, and an outgoing relay's routes and resolver.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::Side;
use toml::Spanned;

use sluice_core::target::normalize_server;

use super::{span_of, Compiler, Result};
use crate::raw::RawTcp;
use crate::settings::{OutgoingRelay, TcpGateway, TcpProtocol, Throttle};

/// Longest stream error text: it is sent to clients that may be anyone.
const MAX_STREAM_ERROR: usize = 512;

impl Compiler<'_> {
    /// `host:port` with a valid host, as written.
    fn host_port(&self, s: &Spanned<String>, key: &str) -> Result<String> {
        let v = s.get_ref();
        let has_port = v.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && (!h.contains(':') || h.ends_with(']')) && p.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !has_port || normalize_server(v).is_none() {
            return Err(self.err(
                span_of(s),
                format!("{key} must be host:port (e.g. \"127.0.0.1:5222\" or \"[::1]:5269\"), got {v:?}"),
            ));
        }
        Ok(v.clone())
    }

    /// The upstream of an incoming listener; empty for an outgoing relay,
    /// which has none.
    pub(super) fn tcp_upstream(&self, whole: &Spanned<RawTcp>, r: &RawTcp) -> Result<String> {
        let outgoing = match &r.direction {
            None => false,
            Some(d) => match d.get_ref().as_str() {
                "incoming" => false,
                "outgoing" => true,
                other => {
                    return Err(self.err(
                        span_of(d),
                        format!("unknown direction {other:?}: expected incoming or outgoing"),
                    ))
                }
            },
        };
        match (&r.upstream, outgoing) {
            (Some(u), false) => self.host_port(u, "upstream"),
            (None, false) => Err(self.err(
                span_of(whole),
                "missing upstream (host:port), or direction = \"outgoing\" for an s2s-out relay",
            )),
            (Some(u), true) => Err(self.err(
                span_of(u),
                "an outgoing relay has no upstream: each stream's `to` is its destination, found in routes or through DNS",
            )),
            (None, true) => Ok(String::new()),
        }
    }

    /// `direction = "outgoing"` and its keys; `None` for an incoming
    /// listener, which may not use them.
    fn outgoing_relay(
        &self,
        r: &RawTcp,
        upstream: &str,
        side: Side,
        protocol: TcpProtocol,
    ) -> Result<Option<OutgoingRelay>> {
        if !upstream.is_empty() {
            let stray = r
                .routes
                .as_ref()
                .map(span_of)
                .or(r.resolver.as_ref().map(span_of))
                .or(r.deny_networks.first().map(span_of))
                .or(r.allow_networks.first().map(span_of));
            if let Some(span) = stray {
                return Err(self.err(
                    span,
                    "routes, resolver, deny_networks and allow_networks need direction = \"outgoing\"",
                ));
            }
            return Ok(None);
        }
        let at = r.direction.as_ref().map(span_of).unwrap_or_default();
        if protocol != TcpProtocol::Xmpp || side != Side::Federation {
            return Err(self.err(
                at,
                "direction = \"outgoing\" needs protocol = \"xmpp\" and side = \"federation\": the relay reads each stream's destination from its header",
            ));
        }
        if let Some(b) = r.direct_tls.as_ref().filter(|b| *b.get_ref()) {
            return Err(self.err(
                span_of(b),
                "an outgoing relay reads the stream header: direct_tls is not supported",
            ));
        }
        if r.send_proxy.is_some() {
            return Err(self.err(
                at,
                "an outgoing relay sends no PROXY header: remote servers do not trust us",
            ));
        }
        let mut routes = std::collections::BTreeMap::new();
        if let Some(table) = &r.routes {
            for (domain, to) in table.get_ref() {
                let Some(d) = normalize_server(domain).filter(|d| !d.contains(':')) else {
                    return Err(self.err(span_of(to), format!("route {domain:?}: not a domain")));
                };
                routes.insert(d, self.host_port(to, "a route")?);
            }
        }
        let resolver = match &r.resolver {
            None => None,
            Some(s) => Some(s.get_ref().parse().map_err(|_| {
                self.err(
                    span_of(s),
                    "resolver must be ip:port of a DNS server (e.g. \"127.0.0.1:53\")",
                )
            })?),
        };
        Ok(Some(OutgoingRelay {
            routes,
            resolver,
            deny_networks: self.networks(&r.deny_networks)?,
            allow_networks: self.networks(&r.allow_networks)?,
        }))
    }

    pub(super) fn tcp_gateway(
        &self,
        r: &RawTcp,
        listen: SocketAddr,
        upstream: String,
        side: Side,
        accept_proxy: bool,
    ) -> Result<TcpGateway> {
        let within = |s: &Option<Spanned<String>>, default: Duration, max: Duration, key: &str| {
            let Some(s) = s else { return Ok(default) };
            let d = self.duration(s)?;
            if d > max {
                return Err(self.err(
                    span_of(s),
                    format!(
                        "{key} must be at most {}",
                        sluice_core::rate::format_duration(max)
                    ),
                ));
            }
            Ok(d)
        };
        let header_timeout = within(
            &r.header_timeout,
            Duration::from_secs(3),
            Duration::from_secs(60),
            "header_timeout",
        )?;
        let connect_timeout = within(
            &r.connect_timeout,
            Duration::from_secs(5),
            Duration::from_secs(300),
            "connect_timeout",
        )?;
        let drain_timeout = within(
            &r.drain_timeout,
            Duration::from_secs(30),
            Duration::from_secs(3600),
            "drain_timeout",
        )?;
        let idle_timeout = match &r.idle_timeout {
            None => Some(Duration::from_secs(600)),
            Some(s) if s.get_ref() == "off" => None,
            Some(s) => Some(self.duration(s)?),
        };
        let max_connections = match &r.max_connections {
            None => 10_000,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if (1..=10_000_000).contains(&n) => n,
                _ => return Err(self.err(span_of(n), "max_connections must be between 1 and 10000000")),
            },
        };
        let stream_error = match &r.stream_error {
            None => None,
            Some(s) => {
                let t = s.get_ref();
                if t.is_empty() || t.len() > MAX_STREAM_ERROR || t.chars().any(char::is_control) {
                    return Err(self.err(
                        span_of(s),
                        format!("stream_error must be 1 to {MAX_STREAM_ERROR} bytes of text without control characters"),
                    ));
                }
                Some(t.clone())
            }
        };
        let throttle = match &r.throttle {
            None => Throttle::default(),
            Some(s) => match s.get_ref().as_str() {
                "in" => Throttle::In,
                "out" => Throttle::Out,
                "both" => Throttle::Both,
                "off" => Throttle::Off,
                other => {
                    return Err(self.err(
                        span_of(s),
                        format!("unknown throttle {other:?}: expected in, out, both or off"),
                    ))
                }
            },
        };
        let protocol = match &r.protocol {
            None => TcpProtocol::default(),
            Some(s) => match s.get_ref().as_str() {
                "tcp" => TcpProtocol::Tcp,
                "xmpp" => TcpProtocol::Xmpp,
                other => {
                    return Err(self.err(
                        span_of(s),
                        format!("unknown protocol {other:?}: expected tcp or xmpp"),
                    ))
                }
            },
        };
        let direct_tls = match &r.direct_tls {
            None => false,
            Some(b) if *b.get_ref() && protocol != TcpProtocol::Xmpp => {
                return Err(self.err(
                    span_of(b),
                    "direct_tls needs protocol = \"xmpp\" (a plain TCP relay reads nothing of TLS)",
                ))
            }
            Some(b) => *b.get_ref(),
        };
        let outgoing = self.outgoing_relay(r, &upstream, side, protocol)?;
        Ok(TcpGateway {
            listen,
            upstream,
            side,
            accept_proxy,
            send_proxy: r.send_proxy,
            header_timeout,
            connect_timeout,
            idle_timeout,
            drain_timeout,
            max_connections,
            stream_error,
            throttle,
            protocol,
            direct_tls,
            outgoing,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{parse, ConfigError, TcpProtocol, Throttle};

    const HEAD: &str = "[[gateway.tcp]]\nlisten = \"0.0.0.0:5222\"\nupstream = \"a:1\"\nside = \"client\"\n";

    fn err_at(body: &str, line: usize, col: usize, needle: &str) {
        match parse(&format!("{HEAD}{body}"), "t.toml") {
            Err(ConfigError::Invalid {
                line: l,
                col: c,
                message,
                ..
            }) => {
                assert_eq!((l, c), (line, col), "{message}");
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
            other => panic!("expected an error for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = parse(HEAD, "t.toml").expect("valid");
        let g = &c.gateway.tcp[0];
        assert_eq!(g.header_timeout, Duration::from_secs(3));
        assert_eq!(g.connect_timeout, Duration::from_secs(5));
        assert_eq!(g.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(g.drain_timeout, Duration::from_secs(30));
        assert_eq!(g.max_connections, 10_000);
        assert_eq!(g.stream_error, None);
        assert_eq!(g.throttle, Throttle::In);
        assert_eq!(g.protocol, TcpProtocol::Tcp);
        assert!(!g.direct_tls);
    }

    #[test]
    fn xmpp_listeners() {
        let c = parse(
            &format!("{HEAD}protocol = \"xmpp\"\ndirect_tls = true\n"),
            "t.toml",
        )
        .expect("valid");
        let g = &c.gateway.tcp[0];
        assert_eq!(g.protocol, TcpProtocol::Xmpp);
        assert!(g.direct_tls);
        err_at("protocol = \"jabber\"\n", 5, 12, "expected tcp or xmpp");
        err_at("direct_tls = true\n", 5, 14, "needs protocol = \"xmpp\"");
    }

    #[test]
    fn outgoing_relays() {
        let head =
            "[[gateway.tcp]]\nlisten = \"127.0.0.1:15269\"\nside = \"federation\"\nprotocol = \"xmpp\"\n";
        let ok = format!(
            "{head}direction = \"outgoing\"\nroutes = {{ \"B.Example\" = \"127.0.0.1:5269\" }}\n\
             resolver = \"127.0.0.1:5353\"\ndeny_networks = [\"192.0.2.0/24\"]\nallow_networks = [\"10.1.0.0/16\"]\n"
        );
        let c = parse(&ok, "t.toml").expect("valid");
        let o = c.gateway.tcp[0].outgoing.as_ref().expect("outgoing");
        assert_eq!(
            o.routes.get("b.example").map(String::as_str),
            Some("127.0.0.1:5269")
        );
        assert_eq!(o.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(o.deny_networks.len(), 1);
        assert_eq!(o.allow_networks.len(), 1);
        assert!(c.gateway.tcp[0].upstream.is_empty());
        let bad = |body: &str, needle: &str| match parse(&format!("{head}{body}"), "t.toml") {
            Err(ConfigError::Invalid { message, .. }) => assert!(message.contains(needle), "{message}"),
            other => panic!("{body}: {other:?}"),
        };
        bad("direction = \"out\"\n", "expected incoming or outgoing");
        bad("\n", "missing upstream");
        bad(
            "direction = \"outgoing\"\nupstream = \"a:1\"\n",
            "has no upstream",
        );
        bad(
            "direction = \"outgoing\"\nroutes = { \"b\" = \"nowhere\" }\n",
            "host:port",
        );
        bad("direction = \"outgoing\"\nresolver = \"dns\"\n", "ip:port");
        bad(
            "direction = \"outgoing\"\nsend_proxy = \"v2\"\n",
            "no PROXY header",
        );
        bad("upstream = \"a:1\"\nroutes = {}\n", "need direction");
        let client = "[[gateway.tcp]]\nlisten = \"127.0.0.1:15269\"\nside = \"client\"\nprotocol = \"xmpp\"\ndirection = \"outgoing\"\n";
        match parse(client, "t.toml") {
            Err(ConfigError::Invalid {
                line, col, message, ..
            }) => {
                assert_eq!((line, col), (5, 13));
                assert!(message.contains("side = \"federation\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_key() {
        let body = "header_timeout = \"500ms\"\nconnect_timeout = \"2s\"\nidle_timeout = \"off\"\n\
                    drain_timeout = \"1m\"\nmax_connections = 300\nstream_error = \"Too many connections\"\n\
                    throttle = \"both\"\n";
        let c = parse(&format!("{HEAD}{body}"), "t.toml").expect("valid");
        let g = &c.gateway.tcp[0];
        assert_eq!(g.header_timeout, Duration::from_millis(500));
        assert_eq!(g.connect_timeout, Duration::from_secs(2));
        assert_eq!(g.idle_timeout, None);
        assert_eq!(g.drain_timeout, Duration::from_secs(60));
        assert_eq!(g.max_connections, 300);
        assert_eq!(g.stream_error.as_deref(), Some("Too many connections"));
        assert_eq!(g.throttle, Throttle::Both);
        assert!(g.throttle.inbound() && g.throttle.outbound());
    }

    #[test]
    fn errors_point_at_the_value() {
        err_at("header_timeout = \"2m\"\n", 5, 18, "at most 1m");
        err_at("header_timeout = \"0s\"\n", 5, 18, "");
        err_at("connect_timeout = \"soon\"\n", 5, 19, "bad period");
        err_at("idle_timeout = \"never\"\n", 5, 16, "bad period");
        err_at("max_connections = 0\n", 5, 19, "between 1 and");
        err_at("stream_error = \"\"\n", 5, 16, "stream_error");
        err_at("stream_error = \"a\\nb\"\n", 5, 16, "control");
        err_at("throttle = \"up\"\n", 5, 12, "expected in, out, both or off");
        err_at("throtle = \"in\"\n", 5, 1, "unknown field `throtle`");
    }
}
