//! Load-time benchmark for `virtfleet::fleet::load` (Dhall evaluation plus
//! validation) on generated fleets, against a plain-JSON floor.
//!
//! Each fleet size is written three ways into a temp dir:
//!
//! * `literal`   – a literal list of `V.Machine::{ ... }` records;
//! * `generator` – a builtins-only `Natural/fold` generator;
//! * `json`      – the same, fully normalised fleet as JSON, read and parsed
//!   into a `serde_json::Value` (the floor any config format costs).
//!
//! Run with `cargo bench --bench load`. Set `VIRTFLEET_BENCH_MAX=100` to skip
//! sizes above 100 machines for a quick run.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");
const SIZES: [usize; 3] = [10, 100, 1000];
const HOSTS: [&str; 2] = ["hv1", "hv2"];

/// Repetitions of each Dhall measurement (best of these is reported).
const DHALL_RUNS: usize = 3;
/// Once a Dhall case has used this much wall time, stop repeating it (but
/// always keep at least one run), so the 1000-machine case stays bearable.
const DHALL_BUDGET: Duration = Duration::from_secs(45);
/// The JSON floor is microseconds; repeat it more to get a stable minimum.
const JSON_RUNS: usize = 50;

fn main() {
    let max = match std::env::var("VIRTFLEET_BENCH_MAX") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("VIRTFLEET_BENCH_MAX must be a number of machines, got {v:?}");
                std::process::exit(2);
            }
        },
        Err(_) => usize::MAX,
    };
    let sizes: Vec<usize> = SIZES.iter().copied().filter(|&n| n <= max).collect();
    if sizes.is_empty() {
        eprintln!("VIRTFLEET_BENCH_MAX={max} excludes every size in {SIZES:?}");
        std::process::exit(2);
    }

    let dir = tempfile::tempdir().expect("create temp dir");
    let mut rows = Vec::new();
    for &n in &sizes {
        let literal = dir.path().join(format!("literal-{n}.dhall"));
        let generator = dir.path().join(format!("generator-{n}.dhall"));
        let json = dir.path().join(format!("fleet-{n}.json"));
        std::fs::write(&literal, literal_fleet(n)).expect("write literal fleet");
        std::fs::write(&generator, generator_fleet(n)).expect("write generator fleet");
        std::fs::write(&json, json_fleet(n)).expect("write json fleet");

        let (json_best, json_runs) = measure(JSON_RUNS, Duration::MAX, || parse_json(&json, n));
        let base = Row {
            case: "json (baseline)",
            machines: n,
            runs: json_runs,
            best: json_best,
            baseline: json_best,
        };
        eprintln!("{}", base.progress());
        rows.push(base);
        for (case, path) in [("dhall literal", &literal), ("dhall generator", &generator)] {
            let (best, runs) = measure(DHALL_RUNS, DHALL_BUDGET, || load_dhall(path, n));
            let row = Row {
                case,
                machines: n,
                runs,
                best,
                baseline: json_best,
            };
            eprintln!("{}", row.progress());
            rows.push(row);
        }
    }
    print_table(&rows);
}

/// Runs `f` up to `runs` times (at least once, stopping early once `budget`
/// is spent) and returns the fastest run and how many runs were made.
fn measure(runs: usize, budget: Duration, mut f: impl FnMut()) -> (Duration, usize) {
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut done = 0;
    while done < runs.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        done += 1;
        if started.elapsed() >= budget {
            break;
        }
    }
    (best, done)
}

fn load_dhall(path: &Path, n: usize) {
    let fleet = match virtfleet::fleet::load(path) {
        Ok(fleet) => fleet,
        Err(e) => panic!("{}: load failed: {e}", path.display()),
    };
    assert_eq!(
        fleet.machines.len(),
        n,
        "{}: wrong machine count",
        path.display()
    );
    black_box(fleet);
}

fn parse_json(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).expect("read json fleet");
    let value: serde_json::Value = serde_json::from_str(&text).expect("parse json fleet");
    assert_eq!(value["machines"].as_array().map(Vec::len), Some(n));
    black_box(value);
}

/// Machine `i` (0-based) is `vm-{i+1}`, on hv1 when `i` is even, else hv2.
fn host_of(i: usize) -> &'static str {
    HOSTS[i % HOSTS.len()]
}

/// Shared head of both Dhall fleets: the package import and two hosts without
/// a capacity, so no amount of machines trips the capacity check.
fn dhall_prelude() -> String {
    format!(
        r#"let V = {PACKAGE}

let host =
      \(name : Text) ->
        V.Host::{{
        , name
        , uri = "qemu+ssh://root@${{name}}/system"
        , storage = V.Storage.Dir {{ path = "/var/lib/virtfleet" }}
        }}

"#
    )
}

fn dhall_fleet(machines: &str) -> String {
    format!(
        r#"in  V.Fleet::{{
    , name = "bench"
    , hosts = [ host "hv1", host "hv2" ]
    , images =
      [ V.Image::{{
        , name = "debian-12"
        , url = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }}
      ]
    , machines = {machines}
    }}
"#
    )
}

fn literal_fleet(n: usize) -> String {
    let mut s = dhall_prelude();
    let mut list = String::from("\n      [ ");
    for i in 0..n {
        if i > 0 {
            list.push_str("\n      , ");
        }
        write!(
            list,
            r#"V.Machine::{{ name = "vm-{}", image = "debian-12", cpus = 2, memoryMiB = 2048, diskGiB = 20, host = Some "{}" }}"#,
            i + 1,
            host_of(i)
        )
        .unwrap();
    }
    list.push_str("\n      ]");
    s.push_str(&dhall_fleet(&list));
    s
}

fn generator_fleet(n: usize) -> String {
    let mut s = dhall_prelude();
    write!(
        s,
        r#"let mk =
      \(i : Natural) ->
        V.Machine::{{
        , name = "vm-${{Natural/show (i + 1)}}"
        , image = "debian-12"
        , cpus = 2
        , memoryMiB = 2048
        , diskGiB = 20
        , host = Some (if Natural/even i then "hv1" else "hv2")
        }}

let machines =
      Natural/fold
        {n}
        (List V.Machine.Type)
        ( \(acc : List V.Machine.Type) ->
            acc # [ mk (List/length V.Machine.Type acc) ]
        )
        ([] : List V.Machine.Type)

"#
    )
    .unwrap();
    s.push_str(&dhall_fleet("machines"));
    s
}

/// The fleet both Dhall files normalise to, every default spelled out.
fn json_fleet(n: usize) -> String {
    let host = |name: &str| {
        serde_json::json!({
            "name": name,
            "uri": format!("qemu+ssh://root@{name}/system"),
            "storage": { "Dir": { "path": "/var/lib/virtfleet" } },
            "domainType": "Kvm",
            "cpuMode": "HostPassthrough",
            "network": { "Libvirt": "default" },
            "capacity": null,
            "sshTarget": null,
        })
    };
    let machines: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("vm-{}", i + 1),
                "host": host_of(i),
                "image": "debian-12",
                "cpus": 2,
                "memoryMiB": 2048,
                "diskGiB": 20,
                "dataDisks": [],
                "autostart": true,
                "power": "Running",
                "cloudInit": null,
                "snapshots": { "init": true, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0 },
                "protect": false,
            })
        })
        .collect();
    let fleet = serde_json::json!({
        "name": "bench",
        "settings": { "allowDestroy": false, "allowRestart": false, "trashRetentionDays": 7 },
        "hosts": HOSTS.iter().map(|h| host(h)).collect::<Vec<_>>(),
        "images": [{
            "name": "debian-12",
            "url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
            "format": "Qcow2",
        }],
        "machines": machines,
    });
    serde_json::to_string_pretty(&fleet).expect("serialise json fleet")
}

struct Row {
    case: &'static str,
    machines: usize,
    runs: usize,
    best: Duration,
    baseline: Duration,
}

impl Row {
    fn best_ms(&self) -> f64 {
        self.best.as_secs_f64() * 1e3
    }

    fn per_machine_ms(&self) -> f64 {
        self.best_ms() / self.machines as f64
    }

    fn ratio(&self) -> f64 {
        self.best.as_secs_f64() / self.baseline.as_secs_f64()
    }

    fn progress(&self) -> String {
        format!(
            "  {} x{}: best {:.3} ms of {} run(s)",
            self.case,
            self.machines,
            self.best_ms(),
            self.runs
        )
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<16} {:>8} {:>5} {:>12} {:>12} {:>12}",
        "case", "machines", "runs", "best (ms)", "ms/machine", "x JSON"
    );
    println!("{}", "-".repeat(16 + 9 + 6 + 13 * 3));
    for r in rows {
        println!(
            "{:<16} {:>8} {:>5} {:>12.3} {:>12.4} {:>12.1}",
            r.case,
            r.machines,
            r.runs,
            r.best_ms(),
            r.per_machine_ms(),
            r.ratio()
        );
    }
    println!();
    println!(
        "best of N runs; \"x JSON\" = best time / best time to read + serde_json::from_str::<Value> the same fleet as JSON"
    );
}
