//! `[[gateway.tcp]]`: timeouts, the global cap, the stream error and which
//! directions are throttled.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::Side;
use toml::Spanned;

use super::{span_of, Compiler, Result};
use crate::raw::RawTcp;
use crate::settings::{TcpGateway, TcpProtocol, Throttle};

/// Longest stream error text: it is sent to clients that may be anyone.
const MAX_STREAM_ERROR: usize = 512;

impl Compiler<'_> {
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
