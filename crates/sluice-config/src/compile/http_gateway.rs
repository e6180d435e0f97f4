//! `[[gateway.http]]`: TLS files, identity, appservice tokens and rules.

use std::net::SocketAddr;

use sluice_core::{Side, Target};

use super::{span_of, Compiler, Result};
use crate::raw::RawHttp;
use crate::settings::{AppserviceToken, HttpGateway, HttpRule, UserIdentity};

impl Compiler<'_> {
    pub(super) fn http_gateway(&self, r: &RawHttp, listen: SocketAddr) -> Result<HttpGateway> {
        let tls_cert = r.tls_cert.as_ref().map(|p| self.path(p)).transpose()?;
        let tls_key = r.tls_key.as_ref().map(|p| self.path(p)).transpose()?;
        match (&r.tls_cert, &r.tls_key) {
            (Some(c), None) => return Err(self.err(span_of(c), "tls_cert needs tls_key")),
            (None, Some(k)) => return Err(self.err(span_of(k), "tls_key needs tls_cert")),
            _ => {}
        }
        let upstream_ca = r.upstream_ca.as_ref().map(|p| self.path(p)).transpose()?;
        if let Some(ca) = &r.upstream_ca {
            if !r.upstream.get_ref().starts_with("https://") {
                return Err(self.err(span_of(ca), "upstream_ca needs an https:// upstream"));
            }
        }
        let mut appservices: Vec<AppserviceToken> = Vec::new();
        for a in &r.appservice {
            let a = a.get_ref();
            let id = a.id.get_ref();
            Target::appservice(id).map_err(|e| self.err(span_of(&a.id), e))?;
            if appservices.iter().any(|x| x.id == *id) {
                return Err(self.err(span_of(&a.id), format!("appservice {id:?} is listed twice")));
            }
            appservices.push(AppserviceToken {
                id: id.clone(),
                token_file: self.path(&a.token_file)?,
            });
        }
        let mut rules = Vec::new();
        for rule in &r.rule {
            let rule = rule.get_ref();
            let method = match &rule.method {
                None => None,
                Some(m) => {
                    let v = m.get_ref();
                    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(self.err(
                            span_of(m),
                            format!("method must be an upper-case HTTP method such as \"POST\", got {v:?}"),
                        ));
                    }
                    Some(v.clone())
                }
            };
            let path = rule.path.get_ref();
            let star = path.find('*');
            if !path.starts_with('/') || star.is_some_and(|i| i + 1 != path.len()) {
                return Err(self.err(
                    span_of(&rule.path),
                    format!("path must start with '/' and may end in '*' (a prefix), got {path:?}"),
                ));
            }
            let side = match &rule.side {
                None => Side::Client,
                Some(s) => s.get_ref().parse().map_err(|e| self.err(span_of(s), e))?,
            };
            let action = rule.action.get_ref();
            if !self.actions.contains_key(&(side, action.clone())) {
                return Err(self.err(
                    span_of(&rule.action),
                    format!("unknown {side} action {action:?} (declare it under [actions.{side}])"),
                ));
            }
            // Bytes or events as the action counts them: a byte action
            // charged 1 per request, or an event action charged a body's
            // size, would silently disable or break the limit.
            let bytes = match (rule.bytes, super::unit_of(side, action)) {
                (None, unit) => unit == Some(sluice_core::Unit::Bytes),
                (Some(false), Some(sluice_core::Unit::Bytes)) => {
                    return Err(self.err(
                        span_of(&rule.action),
                        format!("{side}.{action} counts bytes: the rule's bytes must be true (or left out)"),
                    ))
                }
                (Some(true), Some(sluice_core::Unit::Events)) => {
                    return Err(self.err(
                        span_of(&rule.action),
                        format!("{side}.{action} counts events: the rule's bytes = true would charge each body's size"),
                    ))
                }
                (Some(b), _) => b,
            };
            rules.push(HttpRule {
                method,
                path: path.clone(),
                side,
                action: action.clone(),
                bytes,
                long_poll: rule.long_poll.unwrap_or(false),
            });
        }
        let long_polls_per_account = match &r.long_polls_per_account {
            None => 8,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => return Err(self.err(span_of(n), "long_polls_per_account must be between 1 and 1024")),
            },
        };
        let body_timeout = match &r.body_timeout {
            None => std::time::Duration::from_secs(60),
            Some(d) => self.duration(d)?,
        };
        let upstream_timeout = match &r.upstream_timeout {
            None => std::time::Duration::from_secs(60),
            Some(d) => self.duration(d)?,
        };
        let workers = match &r.workers {
            None => None,
            Some(n) => match u16::try_from(*n.get_ref()) {
                Ok(n) if (1..=256).contains(&n) => Some(n),
                _ => return Err(self.err(span_of(n), "workers must be between 1 and 256")),
            },
        };
        Ok(HttpGateway {
            listen,
            upstream: r.upstream.get_ref().clone(),
            upstream_ca,
            protocol: r.protocol,
            tls_cert,
            tls_key,
            user_identity: r.user_identity.unwrap_or(UserIdentity::Whoami),
            real_ip_header: r.real_ip_header.unwrap_or_default(),
            appservices,
            rules,
            long_polls_per_account,
            body_timeout,
            upstream_timeout,
            workers,
        })
    }
}
