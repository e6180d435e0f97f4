//! `sluice-bench`: how fast and how large sluice's decision path is, measured
//! in one run against governor and against a raw GCRA table, plus a flood of
//! fresh addresses against a capped store. See `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p sluice-bench                # the full run (~2 minutes on 2 cores)
//! cargo run --release -p sluice-bench -- --quick     # a smoke run (seconds)
//! cargo run --release -p sluice-bench -- --help
//! ```

mod children;
mod contenders;
mod harness;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_core::CoarseClock;

mod lists;

use children::Report;
use contenders::{EngineBench, GovernorBench, RawBench, Seqs, StoreBench};
use harness::{Contender, Measured, Plan};

const HELP: &str = "\
sluice-bench: sluice's two-bucket decision vs governor vs a raw GCRA table,
memory per tracked key, and a flood of fresh IPv6 /64s.

USAGE: sluice-bench [OPTIONS]

  --quick               small sizes and short repetitions (a smoke run)
  --only LIST           sections to run: speed,memory,flood,lists (default: all)
  --keys LIST           active keys for the timing runs (default 1000,1000000)
  --threads LIST        thread counts (default 1,2)
  --reps N              timed repetitions per contender (default 9)
  --rep-ms N            target length of one repetition (default 250)
  --warm-ops N          warm-up decisions per thread (default 131072)
  --mem-keys N          keys for the memory measurement (default 1000000)
  --flood N             fresh /64s in the flood (default 10000000)
  --flood-max-keys N    the flood store's max_keys (default 1000000)
  --seed N              seed of key orders and store keys
  --headroom F          max_keys of the sluice stores as a multiple of the active keys
                        (default 2: the table half full)
  --contenders LIST     timing contenders: engine,admit,bans,store,governor,raw (default: all;
                        for profiling one alone; ratios need raw)
";

/// Bans in force for the `bans` contender: none of them matches a request,
/// so it measures what a populated ban list costs every decision.
const BANS: u32 = 10_000;
#[derive(Debug, Clone)]
struct Config {
    keys: Vec<u32>,
    threads: Vec<usize>,
    plan: Plan,
    mem_keys: u32,
    flood: u32,
    flood_max_keys: u32,
    speed: bool,
    memory: bool,
    run_flood: bool,
    lists: bool,
    list_sizes: lists::Sizes,
    seed: u64,
    contenders: Vec<String>,
    headroom: f64,
}

impl Config {
    fn full() -> Self {
        Self {
            keys: vec![1_000, 1_000_000],
            threads: vec![1, 2],
            plan: Plan {
                warm_ops: 1 << 17,
                rep: Duration::from_millis(250),
                reps: 9,
            },
            mem_keys: 1_000_000,
            flood: 10_000_000,
            flood_max_keys: 1_000_000,
            speed: true,
            memory: true,
            run_flood: true,
            lists: true,
            list_sizes: lists::Sizes {
                domains: 100_000,
                cidrs: 50_000,
                hashes: 10_000,
            },
            seed: 0x5EED_51CE,
            contenders: ["engine", "admit", "bans", "store", "governor", "raw"]
                .map(String::from)
                .to_vec(),
            headroom: 2.0,
        }
    }

    fn quick() -> Self {
        Self {
            keys: vec![1_000, 50_000],
            plan: Plan {
                warm_ops: 1 << 13,
                rep: Duration::from_millis(20),
                reps: 3,
            },
            mem_keys: 50_000,
            flood: 500_000,
            flood_max_keys: 50_000,
            list_sizes: lists::Sizes {
                domains: 2_000,
                cidrs: 1_000,
                hashes: 200,
            },
            ..Self::full()
        }
    }

    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut cfg = if args.iter().any(|a| a == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--quick" => {}
                "-h" | "--help" => return Ok(None),
                "--only" => {
                    let v = value()?;
                    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
                    if let Some(bad) = parts
                        .iter()
                        .find(|p| !["speed", "memory", "flood", "lists"].contains(p))
                    {
                        return Err(format!("--only: unknown section {bad:?}"));
                    }
                    cfg.speed = parts.contains(&"speed");
                    cfg.memory = parts.contains(&"memory");
                    cfg.run_flood = parts.contains(&"flood");
                    cfg.lists = parts.contains(&"lists");
                }
                "--keys" => cfg.keys = list(a, value()?, 1..=(1 << 24))?,
                "--threads" => cfg.threads = list(a, value()?, 1..=64)?,
                "--reps" => cfg.plan.reps = num(a, value()?, 1..=1000)?,
                "--rep-ms" => cfg.plan.rep = Duration::from_millis(num(a, value()?, 1..=60_000)?),
                "--warm-ops" => cfg.plan.warm_ops = num(a, value()?, 1..=(1 << 30))?,
                "--mem-keys" => cfg.mem_keys = num(a, value()?, 1..=(1 << 24))?,
                "--flood" => cfg.flood = num(a, value()?, 1..=u32::MAX)?,
                "--flood-max-keys" => cfg.flood_max_keys = num(a, value()?, 1..=(1 << 28))?,
                "--headroom" => {
                    let v = value()?;
                    cfg.headroom = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| (1.0..=16.0).contains(f))
                        .ok_or_else(|| format!("--headroom: {v:?} is not a number from 1 to 16"))?;
                }
                "--seed" => cfg.seed = num(a, value()?, 0..=u64::MAX)?,
                "--contenders" => {
                    let v = value()?;
                    cfg.contenders = v.split(',').map(|p| p.trim().to_owned()).collect();
                    if let Some(bad) = cfg.contenders.iter().find(|p| {
                        !["engine", "admit", "bans", "store", "governor", "raw"].contains(&p.as_str())
                    }) {
                        return Err(format!("--contenders: unknown contender {bad:?}"));
                    }
                }
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
        }
        Ok(Some(cfg))
    }
}

fn num<T>(flag: &str, v: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Debug,
    T::Err: std::fmt::Display,
{
    let n: T = v.trim().parse().map_err(|e| format!("{flag} {v:?}: {e}"))?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{flag} {v:?}: out of range {range:?}"))
    }
}

fn list<T>(flag: &str, v: &str, range: std::ops::RangeInclusive<T>) -> Result<Vec<T>, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Debug + Clone,
    T::Err: std::fmt::Display,
{
    v.split(',').map(|p| num(flag, p, range.clone())).collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().is_some_and(|a| a == "--child") {
        children::child(&args[1..])
    } else {
        match Config::parse(&args) {
            Ok(Some(cfg)) => run(&cfg, &args),
            Ok(None) => {
                print!("{HELP}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn run(cfg: &Config, args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# sluice-bench");
    println!();
    println!("- args: `{}`", args.join(" "));
    println!("- cores: {cores}; CPU: {}", cpu_model());
    println!(
        "- plan: {} reps x ~{} ms per contender, interleaved; median ns/op per thread",
        cfg.plan.reps,
        cfg.plan.rep.as_millis()
    );
    let mut verdicts = Vec::new();
    if cfg.speed {
        speed(cfg, &mut verdicts);
    }
    if cfg.memory {
        memory(cfg, &mut verdicts)?;
    }
    if cfg.run_flood {
        flood(cfg, &mut verdicts)?;
    }
    if cfg.lists {
        blocklists(cfg, &mut verdicts);
    }
    println!();
    println!("## Targets");
    println!();
    for v in &verdicts {
        println!("- {v}");
    }
    println!();
    println!("(total {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn speed(cfg: &Config, verdicts: &mut Vec<String>) {
    println!();
    println!("## Two-bucket decision (per-IP + global), random key order");
    println!();
    println!("| active keys | threads | contender | ns/op (median) | min–max | Mdecisions/s (all threads) | × raw | allowed |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    let max_threads = cfg.threads.iter().copied().max().unwrap_or(1);
    let largest = cfg.keys.iter().copied().max().unwrap_or(0);
    for &keys in &cfg.keys {
        let clock = CoarseClock::new();
        let seq_len = (keys as usize * 4).next_power_of_two().clamp(1 << 16, 1 << 20);
        let seqs = Seqs::new(keys, max_threads, seq_len, cfg.seed);
        let max_keys = (f64::from(keys) * cfg.headroom).ceil() as usize;
        let engine = EngineBench::new(max_keys, &clock, &seqs);
        let store = StoreBench::new(max_keys, &clock, &seqs, cfg.seed);
        let gov = GovernorBench::new(&seqs);
        let raw = RawBench::new(keys, &clock, &seqs);
        contenders::populate(keys, &engine, &store, &gov, &raw, cfg.seed);
        let admit = contenders::AdmitBench(&engine);
        let banned = EngineBench::new(max_keys, &clock, &seqs);
        contenders::ban_others(&banned.engine, BANS);
        (0..keys).for_each(|i| banned.touch(i));
        let bans = contenders::BansBench(&banned);
        let all: [(&str, &dyn Contender); 6] = [
            ("engine", &engine),
            ("bans", &bans),
            ("admit", &admit),
            ("store", &store),
            ("governor", &gov),
            ("raw", &raw),
        ];
        let list: Vec<&dyn Contender> = all
            .iter()
            .filter(|(n, _)| cfg.contenders.iter().any(|c| c == n))
            .map(|(_, c)| *c)
            .collect();
        for &threads in &cfg.threads {
            let ms = harness::measure(&list, threads, cfg.plan);
            let by = |name: &str| {
                ms.iter()
                    .find(|m| m.name == name)
                    .map_or(f64::NAN, Measured::median)
            };
            let raw_ns = by(raw.name());
            for m in &ms {
                print_row(keys, m, raw_ns);
            }
            let core = [engine.name(), admit.name(), store.name(), gov.name(), raw.name()];
            if keys == largest && core.iter().all(|n| ms.iter().any(|m| m.name == *n)) {
                let (e, a, s, g) = (
                    by(engine.name()),
                    by(admit.name()),
                    by(store.name()),
                    by(gov.name()),
                );
                verdicts.push(format!(
                    "{keys} keys, {threads} thread(s): sluice engine {e:.0} ns = {:.2}× raw ({raw_ns:.0} ns): {}; \
                     verdict-only admit {a:.0} ns = {:.2}× raw; \
                     store alone {s:.0} ns = {:.2}× raw; vs governor {g:.0} ns: check is {:.2}× its time ({}), admit {:.2}× ({})",
                    e / raw_ns,
                    if e <= 2.0 * raw_ns { "within 2× (met)" } else { "NOT within 2× (missed)" },
                    a / raw_ns,
                    s / raw_ns,
                    e / g,
                    if e < g { "faster: met" } else { "NOT faster: missed" },
                    a / g,
                    if a < g { "faster: met" } else { "NOT faster: missed" },
                ));
            }
        }
        let st = engine.store.stats();
        println!(
            "| | | _engine store after: capacity {}, evictions {}; governor keys {}_ | | | | | |",
            st.capacity,
            st.evictions,
            gov.keys()
        );
    }
}

fn blocklists(cfg: &Config, verdicts: &mut Vec<String>) {
    let sz = cfg.list_sizes;
    let (l, secs, rss) = lists::build_measured(sz, cfg.seed);
    let n = lists::entries(&l);
    let bytes = l.bytes();
    println!();
    println!(
        "## Blocklists: {} domains (subdomains), {} CIDRs, {} SHA-256 digests, three sources",
        sz.domains, sz.cidrs, sz.hashes
    );
    println!();
    println!(
        "- built in {:.2} s; {n} entries held; {bytes} bytes accounted = {:.1} B/entry \
         (resident-set growth while building: {:.1} B/entry)",
        secs,
        bytes as f64 / n as f64,
        rss as f64 / n as f64
    );
    verdicts.push(format!(
        "blocklists: {:.1} B per entry accounted ({:.1} resident): {}",
        bytes as f64 / n as f64,
        rss as f64 / n as f64,
        if (bytes as f64 / n as f64) < 64.0 {
            "under 64 (met)"
        } else {
            "NOT under 64 (missed)"
        }
    ));
    println!();
    println!("| active keys | threads | contender | ns/op (median) | min–max | Mdecisions/s (all threads) | × no lists | allowed |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    let max_threads = cfg.threads.iter().copied().max().unwrap_or(1);
    for &keys in &cfg.keys {
        let clock = CoarseClock::new();
        let seq_len = (keys as usize * 4).next_power_of_two().clamp(1 << 16, 1 << 20);
        let seqs = Seqs::new(keys, max_threads, seq_len, cfg.seed);
        let max_keys = (f64::from(keys) * cfg.headroom).ceil() as usize;
        let ip = lists::ListBench::new("check ip, no lists", max_keys, &clock, &seqs, None, false);
        let ip_l = lists::ListBench::new("check ip, lists", max_keys, &clock, &seqs, Some(l.clone()), false);
        let user = lists::ListBench::new("check ip+user, no lists", max_keys, &clock, &seqs, None, true);
        let user_l = lists::ListBench::new(
            "check ip+user, lists",
            max_keys,
            &clock,
            &seqs,
            Some(l.clone()),
            true,
        );
        for b in [&ip, &ip_l, &user, &user_l] {
            b.populate(keys);
        }
        let all: [&dyn Contender; 4] = [&ip, &ip_l, &user, &user_l];
        for &threads in &cfg.threads {
            let ms = harness::measure(&all, threads, cfg.plan);
            let by = |name: &str| {
                ms.iter()
                    .find(|m| m.name == name)
                    .map_or(f64::NAN, Measured::median)
            };
            for m in &ms {
                let base = if m.name.contains("ip+user") {
                    by(user.name())
                } else {
                    by(ip.name())
                };
                print_row(keys, m, base);
            }
            for (with, without) in [(&ip_l, &ip), (&user_l, &user)] {
                let (a, b) = (by(with.name()), by(without.name()));
                verdicts.push(format!(
                    "{keys} keys, {threads} thread(s): {} {a:.1} ns vs {b:.1} ns without: {:+.1}% ({})",
                    with.name(),
                    100.0 * (a / b - 1.0),
                    if a <= b * 1.05 {
                        "within 5%: met"
                    } else {
                        "NOT within 5%: missed"
                    }
                ));
            }
        }
    }
}

fn print_row(keys: u32, m: &Measured, raw_ns: f64) {
    let allowed = if m.ops == 0 {
        "-".to_owned()
    } else if m.allowed == m.ops {
        "100%".to_owned()
    } else {
        format!("{:.3}%", 100.0 * m.allowed as f64 / m.ops as f64)
    };
    println!(
        "| {keys} | {} | {} | {:.1} | {:.1}–{:.1} | {:.2} | {:.2} | {allowed} |",
        m.threads,
        m.name,
        m.median(),
        m.min(),
        m.max(),
        m.mops(),
        m.median() / raw_ns,
    );
}

fn get(r: &Report, k: &str) -> f64 {
    r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn memory(cfg: &Config, verdicts: &mut Vec<String>) -> Result<(), String> {
    let n = cfg.mem_keys;
    let s = children::spawn(&["mem-sluice".into(), n.to_string()])?;
    let g = children::spawn(&["mem-governor".into(), n.to_string()])?;
    let per_cell = get(&s, "bytes") / get(&s, "capacity");
    let s_tracked = get(&s, "tracked");
    let s_rss = get(&s, "rss_total_kib") * 1024.0;
    let g_rss = get(&g, "rss_total_kib") * 1024.0;
    let g_tracked = get(&g, "tracked");
    println!();
    println!("## Memory per tracked key ({n} distinct live keys, each in a fresh process)");
    println!();
    println!("| store | tracked keys | bytes (stats) | RSS delta | bytes per tracked key (RSS) | bytes per cell of max_keys | bound |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| sluice MemoryStore (max_keys = {n}) | {s_tracked} | {} | {:.1} MiB | {:.1} | {per_cell:.1} | fixed at creation; {} evictions |",
        get(&s, "bytes"),
        s_rss / 1048576.0,
        s_rss / s_tracked,
        get(&s, "evictions"),
    );
    println!(
        "| governor keyed (DashMap) | {g_tracked} | – | {:.1} MiB | {:.1} | – | unbounded (grows until retain_recent) |",
        g_rss / 1048576.0,
        g_rss / g_tracked,
    );
    println!();
    println!(
        "At the timing runs' sizing (max_keys = 2 × active keys) sluice holds {:.1} bytes per active key.",
        2.0 * per_cell
    );
    let per_key = s_rss / s_tracked;
    verdicts.push(format!(
        "memory: sluice {per_key:.1} B per tracked key by RSS ({per_cell:.1} B per cell of max_keys; {:.1} B per active key at 2× sizing) vs governor {:.1} B: ≤ 48 B {}",
        2.0 * per_cell,
        g_rss / g_tracked,
        if per_key <= 48.0 && per_cell <= 48.0 { "(met)" } else { "(missed)" }
    ));
    Ok(())
}

fn flood(cfg: &Config, verdicts: &mut Vec<String>) -> Result<(), String> {
    let f = children::spawn(&[
        "flood".into(),
        cfg.flood.to_string(),
        cfg.flood_max_keys.to_string(),
    ])?;
    let mib = |k: &str| get(&f, k) / 1024.0;
    println!();
    println!(
        "## Flood: {} distinct IPv6 /64s through Engine::check, max_keys = {}",
        cfg.flood, cfg.flood_max_keys
    );
    println!();
    let mut t = String::new();
    let row = |t: &mut String, k: &str, v: String| {
        let _ = writeln!(t, "| {k} | {v} |");
    };
    row(
        &mut t,
        "policy",
        "client.target.login.ip = 10/1h, client.global.login = 1e9/1s".into(),
    );
    row(
        &mut t,
        "store capacity (cells) / bytes",
        format!(
            "{} / {:.1} MiB",
            get(&f, "capacity"),
            get(&f, "bytes") / 1048576.0
        ),
    );
    row(
        &mut t,
        "time per decision",
        format!(
            "{:.1} ns ({:.2} s total)",
            get(&f, "ns_per_decision"),
            get(&f, "seconds")
        ),
    );
    let fresh_ok = get(&f, "flood_allowed") / f64::from(cfg.flood.max(1));
    row(
        &mut t,
        "flood decisions allowed (each a fresh key's first request)",
        format!("{} ({:.1}%)", get(&f, "flood_allowed"), 100.0 * fresh_ok),
    );
    row(&mut t, "evictions", format!("{}", get(&f, "evictions")));
    row(
        &mut t,
        "live keys tracked after",
        format!("{}", get(&f, "tracked")),
    );
    row(
        &mut t,
        "peak RSS (VmHWM) before → after",
        format!(
            "{:.1} MiB → {:.1} MiB",
            mib("hwm_before_kib"),
            mib("hwm_after_kib")
        ),
    );
    row(
        &mut t,
        "RSS before → after",
        format!(
            "{:.1} MiB → {:.1} MiB",
            mib("rss_before_kib"),
            mib("rss_after_kib")
        ),
    );
    let before = f.get("abuser_limited_before").is_some_and(|v| v == "true");
    let after = f.get("abuser_limited_after").is_some_and(|v| v == "true");
    row(&mut t, "abuser limited before flood", yes(before));
    row(
        &mut t,
        "abuser still limited after flood",
        format!(
            "{} (retry after {} s)",
            yes(after),
            get(&f, "abuser_retry_after_s")
        ),
    );
    println!("| measure | value |");
    println!("|---|---|");
    print!("{t}");
    let bounded = get(&f, "tracked") <= get(&f, "capacity");
    let hwm_growth = mib("hwm_after_kib") - mib("hwm_before_kib");
    verdicts.push(format!(
        "flood: {} decisions at {:.0} ns each; peak RSS grew {hwm_growth:.1} MiB; tracked ≤ capacity: {}; \
         limited key still limited after: {}; fresh keys allowed: {:.1}%",
        cfg.flood,
        get(&f, "ns_per_decision"),
        yes(bounded),
        yes(before && after),
        100.0 * fresh_ok,
    ));
    println!();
    println!("still limited after flood: {}", yes(before && after));
    Ok(())
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "NO" }.into()
}
