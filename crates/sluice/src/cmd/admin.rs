//! Operator commands: `top`, `inspect`, `ban`, `unban`, `bans`, talking to
//! a running service's admin API.

use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// Where and how to reach the admin API.
#[derive(Debug, Clone)]
pub struct Client {
    /// Base URL, e.g. `http://127.0.0.1:8470`.
    pub server: String,
    /// Bearer token, when the service is not on loopback.
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    pub json: bool,
}

impl Client {
    /// A client for `server`, reading the token from `token_file` if given.
    pub fn new(server: &str, token_file: Option<&Path>, json: bool) -> anyhow::Result<Self> {
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading token file {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            json,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let url = format!("{}{path}", self.server);
        let mut req = agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => r
                .into_json()
                .with_context(|| format!("{url}: response is not JSON")),
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                let field = v["field"].as_str().map(|f| format!(" ({f})")).unwrap_or_default();
                bail!("{url}: {code}: {}{field}", v["error"].as_str().unwrap_or("error"))
            }
            Err(e) => bail!("{url}: {e}"),
        }
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        } else {
            print!("{}", table(v));
        }
        Ok(())
    }

    /// `sluice top`.
    pub fn top(&self, by: &str, limit: usize) -> anyhow::Result<()> {
        let v = self.call("GET", &format!("/v1/admin/top?by={by}&limit={limit}"), None)?;
        self.print(&v, |v| {
            let rows = rows(&v["targets"], &["target", "requests", "denials"]);
            table(&["TARGET", "REQUESTS", "DENIALS"], &rows)
        })
    }

    /// `sluice inspect TARGET`.
    pub fn inspect(&self, target: &str) -> anyhow::Result<()> {
        let v = self.call("GET", &format!("/v1/admin/targets/{}", encode(target)), None)?;
        self.print(&v, |v| {
            let mut out = format!("target   {}\n", text(&v["target"]));
            out += &format!(
                "exempt   {}\nblocked  {}\n",
                text(&v["exempt"]),
                text(&v["blocked"])
            );
            let hits = v["blocklist"]["matches"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                out += "listed   no\n";
            }
            for h in hits {
                out += &format!(
                    "listed   {} ({}) entry {}{}{}\n",
                    text(&h["source"]),
                    text(&h["action"]),
                    text(&h["entry"]),
                    h["reason"]
                        .as_str()
                        .map(|r| format!(", reason {r:?}"))
                        .unwrap_or_default(),
                    if v["blocklist"]["excepted"].as_bool() == Some(true) {
                        " (excepted)"
                    } else {
                        ""
                    },
                );
            }
            match &v["ban"] {
                Value::Null => out += "ban      none\n",
                b => {
                    out += &format!(
                        "ban      {} (until {})\n",
                        text(&b["reason"]),
                        until(&b["expires_ms"])
                    )
                }
            }
            out.push('\n');
            let rows = rows(
                &v["limits"],
                &["name", "kind", "limit", "remaining", "reset_ms", "shadow"],
            );
            out + &table(
                &["LIMIT", "KIND", "SIZE", "REMAINING", "RESET_MS", "SHADOW"],
                &rows,
            )
        })
    }

    /// `sluice bans`.
    pub fn bans(&self) -> anyhow::Result<()> {
        let v = self.call("GET", "/v1/admin/bans", None)?;
        self.print(&v, |v| ban_table(&v["bans"]))
    }

    /// `sluice blocklist check TARGET…`: prints each target with the
    /// sources listing it; `true` when any target is listed.
    pub fn blocklist_check(&self, targets: Vec<String>) -> anyhow::Result<bool> {
        let v = self.call(
            "POST",
            "/v1/admin/blocklist/check",
            Some(json!({"targets": targets})),
        )?;
        let listed = v["results"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["listed"].as_bool() == Some(true)));
        self.print(&v, |v| {
            let mut out = String::new();
            for r in v["results"].as_array().into_iter().flatten() {
                let hits = r["matches"].as_array().cloned().unwrap_or_default();
                if hits.is_empty() {
                    out += &format!("{}\tnot listed\n", text(&r["target"]));
                }
                for h in hits {
                    out += &format!(
                        "{}\t{}\t{}\t{}{}{}\n",
                        text(&r["target"]),
                        text(&h["source"]),
                        text(&h["action"]),
                        text(&h["entry"]),
                        h["reason"].as_str().map(|r| format!("\t{r}")).unwrap_or_default(),
                        if r["excepted"].as_bool() == Some(true) {
                            "\t(excepted)"
                        } else {
                            ""
                        },
                    );
                }
            }
            out
        })?;
        Ok(listed)
    }

    /// `sluice blocklist status`.
    pub fn blocklist_status(&self) -> anyhow::Result<()> {
        let v = self.call("GET", "/v1/admin/blocklist/status", None)?;
        self.print(&v, status_table)
    }

    /// `sluice blocklist refresh [NAME]`.
    pub fn blocklist_refresh(&self, name: Option<&str>) -> anyhow::Result<()> {
        let v = self.call("POST", "/v1/admin/blocklist/refresh", Some(json!({"name": name})))?;
        self.print(&v, status_table)
    }

    /// `sluice ban TARGET… --for D --reason R`.
    pub fn ban(&self, targets: Vec<String>, duration: &str, reason: &str) -> anyhow::Result<()> {
        let v = self.call(
            "POST",
            "/v1/admin/bans",
            Some(json!({"targets": targets, "duration": duration, "reason": reason})),
        )?;
        self.print(&v, |v| ban_table(&v["banned"]))
    }

    /// `sluice unban TARGET…`.
    pub fn unban(&self, targets: Vec<String>) -> anyhow::Result<()> {
        let v = self.call(
            "POST",
            "/v1/admin/bans/remove",
            Some(json!({ "targets": targets })),
        )?;
        self.print(&v, |v| {
            let mut out = ban_table(&v["removed"]);
            for t in v["not_banned"].as_array().into_iter().flatten() {
                out += &format!("not banned: {}\n", text(t));
            }
            out
        })
    }

    /// `sluice reload`.
    pub fn reload(&self) -> anyhow::Result<()> {
        let v = self.call("POST", "/v1/admin/reload", None)?;
        self.print(&v, |_| "reloaded\n".to_owned())
    }
}

/// Targets from the command line, or one per line from stdin when none are
/// given or the only one is `-` (for bulk action: `sluice ban - < list`).
pub fn targets_or_stdin(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    if !(args.is_empty() || args == ["-"]) {
        return Ok(args);
    }
    let mut out = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading targets from stdin")?;
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') {
            out.push(t.to_owned());
        }
    }
    if out.is_empty() {
        bail!("no targets given (as arguments or one per line on stdin)");
    }
    Ok(out)
}

fn encode(s: &str) -> String {
    // Targets hold ':', '@', '/', '#', '[' and ']'; escape what a path segment can't carry.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn until(v: &Value) -> String {
    match v.as_u64() {
        None => "forever".into(),
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let left = ms.saturating_sub(now) / 1000;
            format!("in {}h{:02}m{:02}s", left / 3600, left / 60 % 60, left % 60)
        }
    }
}

fn rows(list: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|item| keys.iter().map(|k| text(&item[*k])).collect())
        .collect()
}

fn ban_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                text(&b["target"]),
                until(&b["expires_ms"]),
                text(&b["source"]),
                text(&b["reason"]),
            ]
        })
        .collect();
    table(&["TARGET", "EXPIRES", "SOURCE", "REASON"], &rows)
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Resolves `--server` (flag, then `SLUICE_SERVER`, then the default).
pub fn server_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("SLUICE_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8470".to_owned())
}

fn status_table(v: &Value) -> String {
    let r = rows(
        &v["sources"],
        &[
            "name",
            "format",
            "action",
            "entries",
            "last_success",
            "stale",
            "last_error",
        ],
    );
    table(
        &[
            "SOURCE",
            "FORMAT",
            "ACTION",
            "ENTRIES",
            "LAST_SUCCESS",
            "STALE",
            "LAST_ERROR",
        ],
        &r,
    )
}
