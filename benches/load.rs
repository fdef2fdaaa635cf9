//! Load-time benchmark for `virtfleet::fleet::load` (Dhall evaluation plus
//! validation) on generated fleets, each way of writing a fleet against a
//! fair JSON baseline measured in the same run.
//!
//! For each size the same fleet is written several ways into a temp dir:
//!
//! * `json`       – the fully normalised fleet as JSON, decoded with serde_json
//!   into the same raw model serde_dhall produces and run through the same
//!   validation (`fleet::validate_raw`): the floor any config format costs;
//! * `helper`     – one file, a list of calls of a small helper function
//!   (`m "vm-1" "hv1"`), as the README recommends;
//! * `split`      – literal records split into imported files of 100
//!   machines, joined with `#`;
//! * `helper split` – helper calls in imported files of 100 machines: both
//!   pieces of README advice together;
//! * `generator`  – a builtins-only `Natural/fold` generator;
//! * `literal`    – one file, a literal list of `V.Machine::{ ... }` records,
//!   five fields one per line (the natural way to write a fleet).
//!
//! First, one machine whose `cpus` is wrapped in 2..N levels of parentheses,
//! the case where each level multiplies parse time. Literal records come
//! last within each size: they are the case that may reach the budget.
//!
//! Every case is best-of-N; a Dhall case stops repeating once it has used
//! its time budget, and a single run is abandoned at the evaluation budget
//! (reported as "> budget", never hanging the bench).
//!
//! Run with `cargo bench --bench load`. Environment:
//! `VIRTFLEET_BENCH_SIZES=100,1000,5000` picks the sizes (default 100,1000;
//! 5000 literal machines take minutes), `VIRTFLEET_BENCH_DEPTH=8` the deepest
//! nesting (default 8), `VIRTFLEET_BENCH_RUN_BUDGET=120` the evaluation
//! budget in seconds for one run (default 60).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use virtfleet::fleet::{EvalOptions, LoadError, load_with, raw, validate_raw};

const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");
const DEFAULT_SIZES: [usize; 2] = [100, 1000];
const DEFAULT_DEPTH: usize = 8;
const HOSTS: [&str; 2] = ["hv1", "hv2"];
/// Machines per imported file in the `split` layout.
const PER_FILE: usize = 100;

/// Repetitions of each Dhall measurement (best of these is reported).
const DHALL_RUNS: usize = 3;
/// Once a Dhall case has used this much wall time, stop repeating it (but
/// always keep at least one run).
const DHALL_CASE_BUDGET: Duration = Duration::from_secs(30);
/// The JSON floor is sub-millisecond; repeat it more for a stable minimum.
const JSON_RUNS: usize = 50;

fn main() {
    let sizes = env_list("VIRTFLEET_BENCH_SIZES").unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    let depth = env_list("VIRTFLEET_BENCH_DEPTH")
        .and_then(|v| v.first().copied())
        .unwrap_or(DEFAULT_DEPTH);
    let run_budget = env_list("VIRTFLEET_BENCH_RUN_BUDGET")
        .and_then(|v| v.first().copied())
        .map_or(Duration::from_secs(60), |s| Duration::from_secs(s as u64));
    let opts = EvalOptions {
        budget: run_budget,
        ..EvalOptions::default()
    };

    let dir = tempfile::tempdir().expect("create temp dir");
    let nest_rows = bench_nesting(dir.path(), depth, &opts);
    let rows = bench_sizes(dir.path(), &sizes, &opts);
    print_table(&nest_rows, "depth");
    print_table(&rows, "machines");
    if rows.iter().chain(&nest_rows).any(|r| r.best.is_none()) {
        println!(
            "a case was abandoned at the budget; its evaluation kept running until the end, so figures measured after it in this run are pessimistic"
        );
    }
    println!(
        "best of N runs; \"x JSON\" = best time / best time of the same fleet as JSON decoded into the same model and validated the same way (measured in this run); \"> budget\" = abandoned at {} s",
        run_budget.as_secs()
    );
}

/// One machine with `cpus` inside 2..=`depth` levels of parentheses; stops
/// at the first depth abandoned at the budget.
fn bench_nesting(dir: &Path, depth: usize, opts: &EvalOptions) -> Vec<Row> {
    // Nesting: one machine, so the JSON floor is the 1-machine fleet.
    let json1 = dir.join("fleet-1.json");
    std::fs::write(&json1, json_fleet(1)).expect("write json fleet");
    let (floor, _) = measure(JSON_RUNS, Duration::MAX, || load_json(&json1, 1));
    let floor = floor.expect("json always finishes");
    let mut nest_rows = Vec::new();
    for d in 2..=depth {
        let path = write(dir, &format!("nested-{d}.dhall"), &nested_fleet(d));
        let (best, runs) = measure(DHALL_RUNS, DHALL_CASE_BUDGET, || {
            load_dhall(Path::new(&path), 1, opts)
        });
        let mut row = Row::new("dhall nested", d, runs, best, floor);
        row.unit = "depth";
        push(&mut nest_rows, row);
        if best.is_none() {
            break;
        }
    }
    nest_rows
}

/// Every layout at every size, each after its JSON baseline.
fn bench_sizes(dir: &Path, sizes: &[usize], opts: &EvalOptions) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in sizes {
        let json = dir.join(format!("fleet-{n}.json"));
        std::fs::write(&json, json_fleet(n)).expect("write json fleet");
        let (json_best, json_runs) = measure(JSON_RUNS, Duration::MAX, || load_json(&json, n));
        let json_best = json_best.expect("json always finishes");
        push(
            &mut rows,
            Row::new("json (baseline)", n, json_runs, Some(json_best), json_best),
        );
        let layouts: [(&str, String); 5] = [
            (
                "dhall helper",
                write(dir, &format!("helper-{n}.dhall"), &helper_fleet(n)),
            ),
            ("dhall split", split_fleet(dir, n, Layout::Literal)),
            ("dhall helper split", split_fleet(dir, n, Layout::Helper)),
            (
                "dhall generator",
                write(dir, &format!("generator-{n}.dhall"), &generator_fleet(n)),
            ),
            // Last: if a run is abandoned at the budget, its evaluation keeps
            // running in the background (a thread cannot be stopped) and
            // would slow down every case measured after it.
            (
                "dhall literal",
                write(dir, &format!("literal-{n}.dhall"), &literal_fleet(n)),
            ),
        ];
        for (case, path) in layouts {
            let path = Path::new(&path);
            let (best, runs) = measure(DHALL_RUNS, DHALL_CASE_BUDGET, || load_dhall(path, n, opts));
            push(&mut rows, Row::new(case, n, runs, best, json_best));
        }
    }

    rows
}

fn env_list(var: &str) -> Option<Vec<usize>> {
    let v = std::env::var(var).ok()?;
    match v.split(',').map(|s| s.trim().parse::<usize>()).collect() {
        Ok(list) => Some(list),
        Err(_) => {
            eprintln!("{var} must be a comma-separated list of numbers, got {v:?}");
            std::process::exit(2);
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fleet");
    path.display().to_string()
}

fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("{}", row.progress());
    rows.push(row);
}

/// Runs `f` up to `runs` times (at least once, stopping early once `budget`
/// is spent or a run gives up) and returns the fastest finished run and
/// how many runs were made.
fn measure(
    runs: usize,
    budget: Duration,
    mut f: impl FnMut() -> Option<()>,
) -> (Option<Duration>, usize) {
    let started = Instant::now();
    let mut best: Option<Duration> = None;
    let mut done = 0;
    while done < runs.max(1) {
        let t = Instant::now();
        let finished = f();
        done += 1;
        if finished.is_none() {
            return (None, done);
        }
        best = Some(best.map_or(t.elapsed(), |b| b.min(t.elapsed())));
        if started.elapsed() >= budget {
            break;
        }
    }
    (best, done)
}

/// Loads a Dhall fleet; None when it was abandoned at the budget.
fn load_dhall(path: &Path, n: usize, opts: &EvalOptions) -> Option<()> {
    match load_with(path, opts) {
        Ok(loaded) => {
            assert_eq!(loaded.fleet.machines.len(), n, "{}", path.display());
            black_box(loaded);
            Some(())
        }
        Err(LoadError::Eval(virtfleet::fleet::EvalError::TimedOut { .. })) => None,
        Err(e) => panic!("{}: load failed: {e}", path.display()),
    }
}

/// The baseline: read, decode into the raw model, validate (always finishes).
fn load_json(path: &Path, n: usize) -> Option<()> {
    let text = std::fs::read_to_string(path).expect("read json fleet");
    let raw: raw::Fleet = serde_json::from_str(&text).expect("decode json fleet");
    let fleet = validate_raw(raw, path, &text).expect("json fleet is valid");
    assert_eq!(fleet.machines.len(), n);
    black_box(fleet);
    Some(())
}

/// Machine `i` (0-based) is `vm-{i+1}`, on hv1 when `i` is even, else hv2.
fn host_of(i: usize) -> &'static str {
    HOSTS[i % HOSTS.len()]
}

/// Shared head of the Dhall fleets: the package import and two hosts
/// without a capacity, so no number of machines trips the capacity check.
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

/// One literal machine record, five fields one per line.
fn literal_machine(i: usize) -> String {
    format!(
        "V.Machine::{{\n        , name = \"vm-{}\"\n        , host = Some \"{}\"\n        , image = \"debian-12\"\n        , cpus = 2\n        , memoryMiB = 2048\n        }}",
        i + 1,
        host_of(i)
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    format!("\n      [ {}\n      ]", items.join("\n      , "))
}

fn literal_fleet(n: usize) -> String {
    let mut s = dhall_prelude();
    s.push_str(&dhall_fleet(&list((0..n).map(literal_machine))));
    s
}

/// The helper a fleet written the README's way defines once.
const HELPER: &str = "let m =\n      \\(name : Text) ->\n      \\(host : Text) ->\n        V.Machine::{ name, host = Some host, image = \"debian-12\", cpus = 2, memoryMiB = 2048 }\n\n";

/// Machine `i` as a call of [`HELPER`].
fn helper_call(i: usize) -> String {
    format!("m \"vm-{}\" \"{}\"", i + 1, host_of(i))
}

fn helper_fleet(n: usize) -> String {
    let mut s = dhall_prelude();
    s.push_str(HELPER);
    s.push_str(&dhall_fleet(&list((0..n).map(helper_call))));
    s
}

/// How machines are written in the files of a split fleet.
#[derive(Clone, Copy)]
enum Layout {
    Literal,
    Helper,
}

/// Machines in files of [`PER_FILE`]; returns the fleet path.
fn split_fleet(dir: &Path, n: usize, layout: Layout) -> String {
    let (tag, helper, machine): (&str, &str, fn(usize) -> String) = match layout {
        Layout::Literal => ("split", "", literal_machine),
        Layout::Helper => ("helper-split", HELPER, helper_call),
    };
    let sub = dir.join(format!("{tag}-{n}"));
    std::fs::create_dir_all(&sub).expect("create split dir");
    let mut parts = Vec::new();
    for (k, start) in (0..n).step_by(PER_FILE).enumerate() {
        let end = (start + PER_FILE).min(n);
        let text = format!(
            "let V = {PACKAGE}\n\n{helper}in  {}\n",
            list((start..end).map(machine))
        );
        std::fs::write(sub.join(format!("machines-{k}.dhall")), text).expect("write part");
        parts.push(format!("./{tag}-{n}/machines-{k}.dhall"));
    }
    let mut s = dhall_prelude();
    s.push_str(&dhall_fleet(&format!(
        "\n        {}",
        parts.join("\n      # ")
    )));
    write(dir, &format!("{tag}-{n}.dhall"), &s)
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

/// One machine whose `cpus` sits inside `depth` levels of parentheses.
fn nested_fleet(depth: usize) -> String {
    let cpus = format!("{}2{}", "(".repeat(depth), ")".repeat(depth));
    let machine = format!(
        "V.Machine::{{ name = \"vm-1\", host = Some \"hv1\", image = \"debian-12\", cpus = {cpus}, memoryMiB = 2048 }}"
    );
    let mut s = dhall_prelude();
    s.push_str(&dhall_fleet(&format!("[ {machine} ]")));
    s
}

/// The fleet every Dhall file normalises to, every default spelled out.
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
                "diskGiB": 10,
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
    size: usize,
    unit: &'static str,
    runs: usize,
    best: Option<Duration>,
    baseline: Duration,
}

impl Row {
    fn new(
        case: &'static str,
        size: usize,
        runs: usize,
        best: Option<Duration>,
        baseline: Duration,
    ) -> Row {
        Row {
            case,
            size,
            unit: "machines",
            runs,
            best,
            baseline,
        }
    }

    fn best_ms(&self) -> Option<f64> {
        self.best.map(|b| b.as_secs_f64() * 1e3)
    }

    fn cells(&self) -> (String, String) {
        match self.best_ms() {
            Some(ms) => (
                format!("{ms:.1}"),
                format!("{:.0}", ms / (self.baseline.as_secs_f64() * 1e3)),
            ),
            None => ("> budget".into(), "-".into()),
        }
    }

    fn progress(&self) -> String {
        let (best, ratio) = self.cells();
        let best = match self.best {
            Some(_) => format!("best {best} ms"),
            None => "abandoned at the budget".to_owned(),
        };
        format!(
            "  {} {} {}: {best} of {} run(s), x{ratio} JSON",
            self.case, self.size, self.unit, self.runs
        )
    }
}

fn print_table(rows: &[Row], size: &str) {
    println!();
    println!(
        "{:<18} {:>8} {:>5} {:>12} {:>10}",
        "case", size, "runs", "best (ms)", "x JSON"
    );
    println!("{}", "-".repeat(18 + 9 + 6 + 13 + 11));
    for r in rows {
        let (best, ratio) = r.cells();
        println!(
            "{:<18} {:>8} {:>5} {:>12} {:>10}",
            r.case, r.size, r.runs, best, ratio
        );
    }
}
