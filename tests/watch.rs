//! Continuous convergence on the real libvirtd: `virtfleet watch` and
//! `apply --unattended`.
//!
//! What a user relies on: an edit saved by rename (as editors do), in the
//! fleet or a nested import, is converged within seconds; a machine
//! destroyed behind virtfleet's back is started again within one resync
//! interval; a restart-class change is never made unattended without
//! permission but is recorded as pending; SIGTERM lets the step in flight
//! finish and releases the lock; an unreachable host never stops another
//! host from converging; exit codes and metrics say what happened.

mod common;

use common::lab::{Lab, SYSTEM, domains, virsh, virsh_ok};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Writes `text` to `path` the way many editors save: a temporary file in
/// the same directory, renamed over the original (a new inode).
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fleet whose machines live in a nested import: fleet.dhall imports
/// machines.dhall, which imports more.dhall.
fn write_nested(lab: &Lab, hosts: &[String]) {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("dhall/package.dhall");
    let dir = lab.fleet().parent().unwrap().to_owned();
    std::fs::write(
        lab.fleet(),
        format!(
            "let V = {pkg}\nin V.Fleet::{{ name = \"{name}\", settings = V.Settings::{{ trashRetentionDays = 1 }}\n, hosts = [ {hosts} ]\n, images = [ V.Image::{{ name = \"tiny\", url = \"{url}\", format = V.ImageFormat.Raw }} ]\n, machines = ./machines.dhall\n}}\n",
            pkg = pkg.display(),
            name = lab.name,
            hosts = hosts.join(", "),
            url = lab.server.url("/tiny.img"),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("machines.dhall"),
        format!(
            "let V = {}\nin ./more.dhall # ([] : List V.Machine.Type)\n",
            pkg.display()
        ),
    )
    .unwrap();
    write_more(lab, &[]);
    lab.vf(&["images", "lock"]).expect_code(0);
}

/// Sets the machines of more.dhall (the innermost import).
fn write_more(lab: &Lab, machines: &[String]) {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("dhall/package.dhall");
    save_by_rename(
        &lab.fleet().with_file_name("more.dhall"),
        &format!(
            "let V = {}\nin [ {} ] : List V.Machine.Type\n",
            pkg.display(),
            machines.join(", ")
        ),
    );
}

/// A running `virtfleet watch` whose stderr goes to a file.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(lab: &Lab, args: &[&str], log: PathBuf) -> Watch {
        let mut all = vec!["watch", "--debounce", "100ms"];
        if !args.contains(&"--shutdown-timeout") {
            all.extend(["--shutdown-timeout", "1s"]);
        }
        all.extend_from_slice(args);
        let child = lab
            .vf_command(&all)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Watch { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `f(log)` holds; panics with the log after `limit`.
    fn wait_log(&self, limit: Duration, what: &str, f: impl Fn(&str) -> bool) {
        let t = Instant::now();
        while !f(&self.log()) {
            assert!(
                t.elapsed() < limit,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn stop(mut self, limit: Duration) -> (i32, String) {
        self.signal("-TERM");
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code().unwrap_or(-1), self.log());
            }
            assert!(
                t.elapsed() < limit,
                "watch did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state(lab_uri: &str, dom: &str) -> String {
    virsh(lab_uri, &["domstate", dom]).1.trim().to_owned()
}

/// Waits until domain `dom` is running; returns how long it took.
fn wait_running(dom: &str, limit: Duration, watch: &Watch) -> Duration {
    let t = Instant::now();
    while state(SYSTEM, dom) != "running" {
        assert!(
            t.elapsed() < limit,
            "{dom} not running after {limit:?}; log:\n{}",
            watch.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// Lines of the log with `event=NAME` and every `key=value` in `with`.
fn events<'a>(log: &'a str, name: &str, with: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            l.contains(&format!(" event={name} ")) || l.ends_with(&format!(" event={name}"))
        })
        .filter(|l| with.iter().all(|w| l.split(' ').any(|f| f == *w)))
        .collect()
}

#[test]
fn watch_converges_on_edits_resyncs_drift_and_keeps_restarts_pending() {
    let lab = Lab::new("vfwatch1");
    let host = lab.host("local", SYSTEM, &lab.root);
    write_nested(&lab, std::slice::from_ref(&host));
    let scratch = lab.fleet().parent().unwrap().to_owned();
    let w = Watch::start(&lab, &["--resync", "4s"], scratch.join("watch1.log"));
    w.wait_log(Duration::from_secs(60), "the first pass", |l| {
        !events(l, "pass.done", &["host=local", "outcome=converged"]).is_empty()
    });

    // An edit of the innermost import, saved by rename: converged within seconds.
    let a = lab.m("a");
    let saved = Instant::now();
    write_more(&lab, &[lab.machine("a", "")]);
    let latency = wait_running(&a, Duration::from_secs(60), &w);
    eprintln!("latency from save to running: {latency:?}");
    assert!(latency < Duration::from_secs(30), "{latency:?}");
    assert!(saved.elapsed() < Duration::from_secs(60));
    // The pass that started it checks convergence after its steps: let it
    // finish first, or the destroy below races that check (the pass then
    // ends in error and the restart comes from its retry, not a resync).
    w.wait_log(Duration::from_secs(60), "the pass after the edit", |l| {
        events(l, "pass.done", &["host=local", "outcome=converged"]).len() >= 2
    });

    // Destroyed behind its back: started again within one resync interval
    // (4 s) plus the pass itself.
    virsh_ok(SYSTEM, &["destroy", &a]);
    let back = wait_running(&a, Duration::from_secs(20), &w);
    assert!(back < Duration::from_secs(15), "{back:?}");
    assert!(
        !events(&w.log(), "pass.start", &["reason=resync"]).is_empty(),
        "{}",
        w.log()
    );

    // A restart-class change without --allow-restart: pending, recorded,
    // never applied.
    write_more(&lab, &[lab.machine("a", "power = V.Power.Stopped")]);
    w.wait_log(Duration::from_secs(60), "a pending pass", |l| {
        !events(l, "pass.done", &["host=local", "outcome=pending"]).is_empty()
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        state(SYSTEM, &a),
        "running",
        "a stop was applied unattended"
    );
    let hist = json(&lab.vf(&["history", "--json"]).expect_code(0).stdout);
    let pending: Vec<&serde_json::Value> = hist["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "{hist:#}");
    assert_eq!(pending[0]["subject"], format!("local/{a}"));
    assert!(
        pending[0]["detail"]
            .as_str()
            .unwrap()
            .contains("--allow-restart"),
        "{hist:#}"
    );

    let (code, log) = w.stop(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(
        !events(&log, "shutdown.done", &["lock_held=false"]).is_empty(),
        "{log}"
    );
    // Every line is one event with its fields.
    for l in log.lines() {
        assert!(
            l.starts_with("ts=") && l.contains(" event="),
            "not an event line: {l}"
        );
    }
    for l in events(&log, "step.done", &[]) {
        assert!(
            l.contains(" host=local ") && l.contains(" machine=") && l.contains(" step="),
            "{l}"
        );
    }
}

#[test]
fn sigterm_finishes_the_step_in_flight_and_releases_the_lock() {
    let lab = Lab::new("vfwatch2");
    let host = lab.host("local", SYSTEM, &lab.root);
    write_nested(&lab, std::slice::from_ref(&host));
    write_more(&lab, &[lab.machine("a", "")]);
    lab.apply(&[]).expect_code(0);
    let a = lab.m("a");
    assert_eq!(state(SYSTEM, &a), "running");
    let scratch = lab.fleet().parent().unwrap().to_owned();
    // The example guest never answers ACPI: a stop takes the whole
    // shutdown timeout, a long step.
    let w = Watch::start(
        &lab,
        &["--allow-restart", "--shutdown-timeout", "6s", "--json-logs"],
        scratch.join("watch2.log"),
    );
    w.wait_log(Duration::from_secs(60), "the first pass", |l| {
        l.contains("\"event\":\"pass.done\"")
    });
    write_more(&lab, &[lab.machine("a", "power = V.Power.Stopped")]);
    w.wait_log(Duration::from_secs(60), "the stop step", |l| {
        l.lines()
            .any(|x| x.contains("\"event\":\"step.start\"") && x.contains("stop"))
    });
    let signalled = Instant::now();
    let (code, log) = w.stop(Duration::from_secs(60));
    let took = signalled.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(
        took >= Duration::from_secs(3),
        "exited before the step finished: {took:?}\n{log}"
    );
    let lines: Vec<serde_json::Value> = log.lines().map(json).collect();
    let pos = |e: &str| lines.iter().position(|l| l["event"] == e);
    let term = pos("signal").expect("signal logged");
    let done = lines
        .iter()
        .rposition(|l| l["event"] == "step.done" && l["machine"] == a.as_str())
        .unwrap_or_else(|| panic!("step finished: {log}"));
    assert!(done > term, "the step finished after the signal: {log}");
    assert_eq!(lines.last().unwrap()["event"], "shutdown.done", "{log}");
    assert_eq!(lines.last().unwrap()["lock_held"], "false");
    assert_eq!(state(SYSTEM, &a), "shut off");
    // History is honest: the run finished its step and says so.
    let hist = json(&lab.vf(&["history", "--json"]).expect_code(0).stdout);
    let run = &hist["runs"][0];
    assert_eq!(run["command"], "watch", "{hist:#}");
    assert_eq!(run["outcome"], "ok", "{hist:#}");
    // The lock and the host lease are released: an unattended apply runs.
    lab.vf(&["apply", "--unattended", "--allow-restart"])
        .expect_code(0);
}

/// A strict parser of the Prometheus text exposition format (0.0.4):
/// HELP and TYPE before a family's samples, valid metric and label names,
/// quoted and escaped label values, float values, no duplicate series.
/// Returns `name{labels}` -> value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn name_ok(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    assert!(text.ends_with('\n'), "must end with a newline");
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let (kw, name, arg) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or(""));
            assert!(name_ok(name), "bad name in {line}");
            match kw {
                "HELP" => assert!(
                    helped.insert(name.to_owned(), arg.to_owned()).is_none(),
                    "two HELP: {line}"
                ),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "{line}"
                    );
                    assert!(
                        typed.insert(name.to_owned(), arg.to_owned()).is_none(),
                        "two TYPE: {line}"
                    );
                }
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name: {line}");
        assert!(
            typed.contains_key(name) && helped.contains_key(name),
            "sample before TYPE/HELP: {line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .expect(line);
            let mut rest = inner;
            while !rest.is_empty() {
                let (k, v) = rest
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(name_ok(k), "bad label name {k}");
                let mut end = None;
                let mut esc = false;
                for (i, ch) in v.char_indices() {
                    match (esc, ch) {
                        (true, '\\' | '"' | 'n') => esc = false,
                        (true, _) => panic!("bad escape in {line}"),
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label in {line}"));
                rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
            }
        }
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    out
}

#[test]
fn unattended_apply_exit_codes_metrics_and_an_unreachable_host_in_watch() {
    let lab = Lab::new("vfwatch3");
    let scratch = lab.fleet().parent().unwrap().to_owned();
    let host = lab.host("local", SYSTEM, &lab.root);
    write_nested(&lab, std::slice::from_ref(&host));
    write_more(&lab, &[lab.machine("a", "")]);
    let prom = scratch.join("virtfleet.prom");
    let f = |s: &str| format!("{{fleet=\"{}\"{s}}}", lab.name);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "apply",
            "--unattended",
            "--shutdown-timeout",
            "1s",
            "--metrics-file",
        ];
        let p = prom.to_str().unwrap().to_owned();
        args.push(&p);
        args.extend_from_slice(extra);
        let out = lab.vf(&args);
        (
            out.code.unwrap(),
            parse_prometheus(&std::fs::read_to_string(&prom).unwrap()),
            out.stderr,
        )
    };

    // Converged: 0.
    let (code, m, log) = run(&[]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        m[&format!("virtfleet_last_run_outcome{}", f(",outcome=\"converged\""))],
        1.0
    );
    assert!(
        m[&format!("virtfleet_changes_applied{}", f(",class=\"none\""))] >= 1.0,
        "{m:?}"
    );
    assert!(m[&format!("virtfleet_drift{}", f(""))] >= 1.0);
    assert!(m[&format!("virtfleet_last_run_timestamp_seconds{}", f(""))] > 1.6e9);
    assert!(m.contains_key(&format!("virtfleet_dhall_eval_seconds{}", f(""))));
    assert_eq!(run(&[]).0, 0, "nothing to do is converged too");

    // A restart-class change without permission: 4, counted as pending.
    write_more(&lab, &[lab.machine("a", "power = V.Power.Stopped")]);
    let (code, m, log) = run(&[]);
    assert_eq!(code, 4, "{log}");
    assert_eq!(
        m[&format!("virtfleet_changes_pending{}", f(",class=\"restart\""))],
        1.0
    );
    assert_eq!(
        m[&format!("virtfleet_last_run_outcome{}", f(",outcome=\"pending\""))],
        1.0
    );
    assert_eq!(state(SYSTEM, &lab.m("a")), "running");
    // With the permission: applied, 0.
    let (code, m, log) = run(&["--allow-restart"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        m[&format!("virtfleet_changes_applied{}", f(",class=\"restart\""))],
        1.0
    );

    // A second host that cannot be reached: 3, and the first still converges.
    let dead = lab.host(
        "dead",
        "qemu+unix:///system?socket=/nonexistent/vfwatch3.sock",
        &lab.root.join("dead"),
    );
    let on = |m: &str, extra: &str| {
        let sep = if extra.is_empty() { "" } else { ", " };
        lab.machine(m, &format!("host = Some \"local\"{sep}{extra}"))
    };
    write_nested(&lab, &[host.clone(), dead]);
    write_more(&lab, &[on("a", "power = V.Power.Stopped"), on("b", "")]);
    let (code, m, log) = run(&[]);
    assert_eq!(code, 3, "{log}");
    assert_eq!(m[&format!("virtfleet_unreachable_hosts{}", f(""))], 1.0);
    assert_eq!(state(SYSTEM, &lab.m("b")), "running");

    // A fleet that does not load: 1, and the metrics say error.
    std::fs::write(lab.fleet().with_file_name("more.dhall"), "[ oops").unwrap();
    let (code, m, _) = run(&[]);
    assert_eq!(code, 1);
    assert_eq!(
        m["virtfleet_last_run_outcome{fleet=\"\",outcome=\"error\"}"],
        1.0
    );

    // watch with the unreachable host: the reachable one converges (c is
    // created), the dead one backs off, visible in the log; metrics are
    // served on loopback.
    write_more(
        &lab,
        &[on("a", "power = V.Power.Stopped"), on("b", ""), on("c", "")],
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let w = Watch::start(
        &lab,
        &[
            "--resync",
            "1h",
            "--backoff-min",
            "1s",
            "--backoff-max",
            "2s",
            "--metrics-listen",
            &listen,
        ],
        scratch.join("watch3.log"),
    );
    wait_running(&lab.m("c"), Duration::from_secs(60), &w);
    w.wait_log(
        Duration::from_secs(30),
        "two backoffs of the dead host",
        |l| events(l, "host.backoff", &["host=dead"]).len() >= 2,
    );
    assert!(
        events(&w.log(), "host.backoff", &["host=local"]).is_empty(),
        "{}",
        w.log()
    );
    let mut body = String::new();
    let mut conn = std::net::TcpStream::connect(&listen).unwrap();
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    conn.read_to_string(&mut body).unwrap();
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m = parse_prometheus(text);
    assert_eq!(
        m[&format!("virtfleet_unreachable_hosts{}", f(""))],
        1.0,
        "{text}"
    );
    assert!(
        m[&format!("virtfleet_runs_total{}", f(",outcome=\"incomplete\""))] >= 2.0,
        "{text}"
    );
    let (code, log) = w.stop(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert_eq!(domains(SYSTEM, &format!("{}-", lab.name)).len(), 3);
}

#[test]
fn metrics_listen_refuses_a_non_loopback_address() {
    let lab = Lab::new("vfwatch4");
    let out = lab.vf(&["watch", "--metrics-listen", "0.0.0.0:9733"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("only a loopback address"),
        "{}",
        out.stderr
    );
}
