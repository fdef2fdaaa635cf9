//! The NixOS module (nix/module.nix), checked without NixOS.
//!
//! Debian's nix-bin evaluates the module offline, with its store, state,
//! log and config directories in a temporary directory (`build-users-group
//! =` in its nix.conf), so no /nix is created. nixpkgs cannot be fetched
//! here: the module is evaluated against tests/nixos/lib-standin.nix, a
//! STAND-IN for the part of nixpkgs' `lib` it uses, and rendered to unit
//! text by tests/nixos/eval-standin.nix, a STAND-IN for NixOS's module
//! evaluation and unit generation. Everything after the rendering is real:
//! the exact ExecStart= argument vector (split as systemd splits it) runs
//! the built binary against the real libvirtd, `systemd-analyze verify`
//! must accept the unit files without a word on stderr (it exits 0 on
//! unknown keys and bad values, so its silence is the check), and
//! `systemd-analyze calendar` must accept the interval. A table test shows
//! that every option changes the rendered units as documented.

mod common;

use common::lab::{Lab, SYSTEM, virsh};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// nix-instantiate with everything it writes kept in a temporary directory.
struct Nix {
    dir: TempDir,
}

impl Nix {
    fn new() -> Nix {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::write(
            dir.path().join("conf/nix.conf"),
            "build-users-group =\nsubstituters =\n",
        )
        .unwrap();
        Nix { dir }
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("nix-instantiate");
        c.env("NIX_STORE_DIR", d.join("store"))
            .env("NIX_STATE_DIR", d.join("state"))
            .env("NIX_LOG_DIR", d.join("log"))
            .env("NIX_CONF_DIR", d.join("conf"))
            .env_remove("NIX_PATH")
            .current_dir(repo("tests/nixos"));
        c
    }

    /// Evaluates `expr` (strictly) to JSON; Err is nix's stderr.
    fn eval(&self, expr: &str) -> Result<Value, String> {
        let out = self
            .command()
            .args(["--eval", "--strict", "--json", "--expr", expr])
            .output()
            .expect("nix-instantiate (Debian: nix-bin; scripts/setup installs it)");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The module evaluated with `settings` as services.virtfleet.
    fn render(&self, settings: &Value) -> Result<Units, String> {
        let file = self.dir.path().join("settings.json");
        std::fs::write(&file, settings.to_string()).unwrap();
        let v = self.eval(&format!(
            "import ./eval-standin.nix {{ settings = builtins.fromJSON (builtins.readFile {}); pkgs = {{ coreutils = {{ outPath = \"/usr\"; }}; }}; }}",
            file.display()
        ))?;
        Ok(Units {
            enabled: v["enabled"].as_bool().unwrap(),
            service: v["service"].as_str().map(str::to_owned),
            timer: v["timer"].as_str().map(str::to_owned),
            exec_start: v["execStart"].as_str().map(str::to_owned),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Units {
    enabled: bool,
    service: Option<String>,
    timer: Option<String>,
    exec_start: Option<String>,
}

impl Units {
    fn service(&self) -> &str {
        self.service.as_deref().expect("a service unit")
    }

    /// The values of `key=` in the service unit.
    fn values(&self, key: &str) -> Vec<String> {
        unit_values(self.service(), key)
    }

    fn argv(&self) -> Vec<String> {
        systemd_split(self.exec_start.as_deref().unwrap()).unwrap()
    }
}

fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// Splits an ExecStart= value into the argument vector systemd passes to
/// execve (systemd.service(5), "Command lines"): words separated by
/// whitespace; double or single quotes group; C escapes (`\"`, `\\`, `\n`,
/// `\t`, `\xHH`) are decoded; `%%` is `%` and `$$` is `$`. Any other
/// specifier or variable is an error: the module must not leave one in
/// an argument by accident.
fn systemd_split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let quote = (first == '"' || first == '\'').then(|| chars.next().unwrap());
        let mut w = String::new();
        loop {
            let Some(c) = chars.next() else {
                if quote.is_some() {
                    return Err(format!("unterminated quote in {line}"));
                }
                break;
            };
            match c {
                c if Some(c) == quote => break,
                c if quote.is_none() && c.is_whitespace() => break,
                '\\' => match chars.next() {
                    Some('n') => w.push('\n'),
                    Some('t') => w.push('\t'),
                    Some('x') => {
                        let h: String = chars.by_ref().take(2).collect();
                        let b = u8::from_str_radix(&h, 16).map_err(|e| format!("\\x{h}: {e}"))?;
                        w.push(char::from(b));
                    }
                    Some(c @ ('\\' | '"' | '\'' | ' ')) => w.push(c),
                    other => return Err(format!("unsupported escape \\{other:?} in {line}")),
                },
                '%' => match chars.next() {
                    Some('%') => w.push('%'),
                    other => return Err(format!("specifier %{other:?} in an argument: {line}")),
                },
                '$' => match chars.next() {
                    Some('$') => w.push('$'),
                    other => return Err(format!("variable ${other:?} in an argument: {line}")),
                },
                c => w.push(c),
            }
        }
        words.push(w);
    }
    Ok(words)
}

#[test]
fn systemd_split_follows_systemd_quoting() {
    assert_eq!(
        systemd_split(r#""/a b/vf" "--x" "100%%" "$$HOME" plain 'q "x"' "t\tn\x41""#).unwrap(),
        [
            "/a b/vf", "--x", "100%", "$HOME", "plain", "q \"x\"", "t\tnA"
        ]
    );
    assert!(systemd_split(r#""%d/key""#).is_err());
    assert!(systemd_split(r#""$HOME""#).is_err());
    assert!(systemd_split(r#""open"#).is_err());
}

/// `systemd-analyze verify` on the rendered units; Err is anything it
/// said (it exits 0 on unknown keys and bad values, with a warning).
fn verify(units: &Units, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = vec![dir.join("virtfleet.service")];
    std::fs::write(&files[0], units.service()).unwrap();
    if let Some(t) = &units.timer {
        files.push(dir.join("virtfleet.timer"));
        std::fs::write(&files[1], t).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze (Debian: systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(format!("{}: {stderr}", out.status));
    }
    Ok(())
}

/// `systemd-analyze calendar EXPR`: Ok(normalized form) or Err(stderr).
fn calendar(expr: &str) -> Result<String, String> {
    let out = Command::new("systemd-analyze")
        .args(["calendar", expr])
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(stderr.into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Normalized form: "))
        .unwrap_or_default()
        .to_owned())
}

/// A directory that looks like a package: bin/virtfleet is the built binary.
fn package(dir: &Path) -> PathBuf {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    let bin = pkg.join("bin/virtfleet");
    if !bin.exists() {
        std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin("virtfleet"), &bin).unwrap();
    }
    pkg
}

fn base(pkg: &Path) -> Value {
    json!({ "enable": true, "fleetFile": "/etc/virtfleet/fleet.dhall", "package": { "outPath": pkg } })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

#[test]
fn every_option_changes_the_units_as_documented() {
    let nix = Nix::new();
    let scratch = tempfile::tempdir().unwrap();
    let pkg = package(scratch.path());
    let b = base(&pkg);
    let d = nix.render(&b).unwrap();

    // The defaults: a oneshot apply --unattended at every quarter hour,
    // with systemd-managed state and cache directories, after libvirtd.
    let bin = pkg.join("bin/virtfleet").display().to_string();
    assert_eq!(
        d.argv(),
        [
            bin.as_str(),
            "--fleet",
            "/etc/virtfleet/fleet.dhall",
            "--state-dir",
            "/var/lib/virtfleet",
            "--cache-dir",
            "/var/cache/virtfleet",
            "apply",
            "--unattended",
            "--shutdown-timeout",
            "60s"
        ]
    );
    assert_eq!(d.values("Type"), ["oneshot"]);
    assert_eq!(d.values("SuccessExitStatus"), ["4"]);
    assert_eq!(d.values("StateDirectory"), ["virtfleet"]);
    assert_eq!(d.values("StateDirectoryMode"), ["0700"]);
    assert_eq!(
        d.values("KillMode"),
        ["mixed"],
        "SIGTERM to virtfleet alone: the step's ssh must live"
    );
    assert_eq!(d.values("TimeoutStopSec"), ["60s 30s"]);
    assert_eq!(
        d.values("TimeoutStartSec"),
        ["1h"],
        "a hung run must not hold the timer for ever"
    );
    assert_eq!(d.values("CacheDirectory"), ["virtfleet"]);
    assert_eq!(d.values("ProtectSystem"), ["strict"]);
    assert!(d.values("ReadWritePaths").is_empty());
    assert!(d.values("After")[0].contains("libvirtd.service"));
    assert!(d.values("Wants")[0].contains("libvirtd.service"));
    assert!(
        d.values("RestrictAddressFamilies")[0].contains("AF_UNIX"),
        "the libvirt socket"
    );
    assert!(d.values("LoadCredential").is_empty());
    let timer = d.timer.as_deref().unwrap();
    assert_eq!(unit_values(timer, "OnCalendar"), ["*:0/15"]);
    assert_eq!(unit_values(timer, "WantedBy"), ["timers.target"]);
    verify(&d, &scratch.path().join("default")).unwrap();
    assert_eq!(calendar("*:0/15").unwrap(), "*-*-* *:00/15:00");

    type Check = Box<dyn Fn(&Units)>;
    let argv_has = |words: &'static [&'static str]| -> Check {
        Box::new(move |u: &Units| {
            let a = u.argv();
            assert!(
                a.windows(words.len()).any(|w| w == words),
                "{words:?} not in {a:?}"
            );
        })
    };
    let unit_has = |key: &'static str, value: &'static str| -> Check {
        Box::new(move |u: &Units| {
            let all = [u.service(), u.timer.as_deref().unwrap_or("")].concat();
            assert!(
                unit_values(&all, key).iter().any(|v| v == value),
                "{key}={value} not in\n{all}"
            );
        })
    };
    let other_pkg = scratch.path().join("other");
    std::fs::create_dir_all(other_pkg.join("bin")).unwrap();
    std::os::unix::fs::symlink(
        assert_cmd::cargo::cargo_bin("virtfleet"),
        other_pkg.join("bin/virtfleet"),
    )
    .unwrap();
    let other_bin = other_pkg.join("bin/virtfleet").display().to_string();
    let table: Vec<(&str, Value, Check)> = vec![
        (
            "package",
            json!({ "outPath": other_pkg }),
            Box::new(move |u: &Units| assert_eq!(u.argv()[0], other_bin)),
        ),
        ("fleetFile", json!("/srv/my fleet/50% $off.dhall"), {
            let f = argv_has(&["--fleet", "/srv/my fleet/50% $off.dhall"]);
            Box::new(move |u: &Units| f(u))
        }),
        (
            "lockFile",
            json!("/etc/vf/pins.lock"),
            argv_has(&["--lock", "/etc/vf/pins.lock"]),
        ),
        ("stateDir", json!("/var/lib/vf/state"), {
            let a = argv_has(&["--state-dir", "/var/lib/vf/state"]);
            let b = unit_has("StateDirectory", "vf/state");
            Box::new(move |u: &Units| {
                a(u);
                b(u)
            })
        }),
        ("cacheDir", json!("/srv/vf-cache"), {
            let a = argv_has(&["--cache-dir", "/srv/vf-cache"]);
            let b = unit_has("ReadWritePaths", "/srv/vf-cache");
            Box::new(move |u: &Units| {
                a(u);
                b(u);
                assert!(u.values("CacheDirectory").is_empty());
            })
        }),
        ("mode", json!("watch"), {
            let a = unit_has("Type", "exec");
            let b = unit_has("WantedBy", "multi-user.target");
            let c = unit_has("ExecReload", "/usr/bin/kill -HUP $MAINPID");
            Box::new(move |u: &Units| {
                a(u);
                b(u);
                c(u);
                assert!(u.timer.is_none(), "no timer in watch mode");
                assert!(
                    u.values("TimeoutStartSec").is_empty(),
                    "a watch runs for ever by design"
                );
                let argv = u.argv();
                assert!(argv.contains(&"watch".into()) && !argv.contains(&"apply".into()));
            })
        }),
        (
            "interval",
            json!("hourly"),
            unit_has("OnCalendar", "hourly"),
        ),
        (
            "runTimeout",
            json!("30min"),
            unit_has("TimeoutStartSec", "30min"),
        ),
        ("allowRestart", json!(true), argv_has(&["--allow-restart"])),
        ("allowDestroy", json!(true), argv_has(&["--allow-destroy"])),
        ("shutdownTimeout", json!("5min"), {
            let a = argv_has(&["--shutdown-timeout", "5min"]);
            let b = unit_has("TimeoutStopSec", "5min 30s");
            Box::new(move |u: &Units| {
                a(u);
                b(u)
            })
        }),
        ("sshKeyFile", json!("/etc/virtfleet/id_ed25519"), {
            let a = unit_has("LoadCredential", "ssh-key:/etc/virtfleet/id_ed25519");
            let b = unit_has("Environment", "VIRTFLEET_SSH_KEY=%d/ssh-key");
            Box::new(move |u: &Units| {
                a(u);
                b(u)
            })
        }),
        (
            "readWritePaths",
            json!(["/var/lib/libvirt/images", "/var/lib/node-exporter"]),
            unit_has(
                "ReadWritePaths",
                "/var/lib/libvirt/images /var/lib/node-exporter",
            ),
        ),
        (
            "extraArgs",
            json!(["--json-logs", "--metrics-file", "/run/m.prom"]),
            {
                Box::new(|u: &Units| {
                    let a = u.argv();
                    assert_eq!(
                        a[a.len() - 3..],
                        ["--json-logs", "--metrics-file", "/run/m.prom"]
                    );
                })
            },
        ),
        (
            "enable",
            json!(false),
            Box::new(|u: &Units| {
                assert!(!u.enabled && u.service.is_none() && u.timer.is_none());
            }),
        ),
    ];

    // Every option the module declares is in the table.
    let declared = nix
        .eval("builtins.attrNames ((import ../../nix/module.nix) { config = { }; lib = import ./lib-standin.nix; pkgs = { }; }).options.services.virtfleet")
        .unwrap();
    let mut declared: Vec<&str> = declared
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    declared.sort_unstable();
    let mut covered: Vec<&str> = table.iter().map(|(k, _, _)| *k).collect();
    covered.push("enable");
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(declared, covered, "options without a row in the table");

    for (i, (key, value, check)) in table.iter().enumerate() {
        let u = nix.render(&with(b.clone(), key, value.clone())).unwrap();
        assert_ne!(u, d, "{key} = {value} changed nothing");
        check(&u);
        if u.enabled {
            verify(&u, &scratch.path().join(format!("row{i}")))
                .unwrap_or_else(|e| panic!("{key} = {value}: {e}\n{}", u.service()));
        }
    }

    // Bad settings fail the evaluation, naming the option.
    let e = nix
        .render(&with(b.clone(), "mode", json!("sometimes")))
        .unwrap_err();
    assert!(e.contains("services.virtfleet.mode"), "{e}");
    let e = nix
        .render(&with(b.clone(), "allowRestrat", json!(true)))
        .unwrap_err();
    assert!(e.contains("allowRestrat"), "{e}");
    let e = nix
        .render(&json!({ "enable": true, "package": { "outPath": pkg } }))
        .unwrap_err();
    assert!(e.contains("fleetFile"), "{e}");
    // And the checks can fail: a bad interval, a bad unit value.
    assert!(calendar("every other tuesday").is_err());
    let bad = nix
        .render(&with(b.clone(), "shutdownTimeout", json!("soon")))
        .unwrap();
    assert!(verify(&bad, &scratch.path().join("bad")).is_err());

    // package.nix and default.nix at least parse (nixpkgs is not here to
    // build them).
    for f in ["package.nix", "default.nix", "module.nix"] {
        let out = nix
            .command()
            .args(["--parse"])
            .arg(repo("nix").join(f))
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `argv` as systemd would run the service: a clean environment
/// (PATH only), plus its Environment= lines with %d the credentials
/// directory that LoadCredential= fills.
fn run_unit(u: &Units, creds: &Path) -> Command {
    let argv = u.argv();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .current_dir("/");
    for cred in u.values("LoadCredential") {
        let (name, from) = cred.split_once(':').unwrap();
        std::fs::create_dir_all(creds).unwrap();
        std::fs::copy(from, creds.join(name)).unwrap();
    }
    for e in u.values("Environment") {
        let (k, v) = e.split_once('=').unwrap();
        c.env(k, v.replace("%d", &creds.display().to_string()));
    }
    c
}

fn domstate(dom: &str) -> String {
    virsh(SYSTEM, &["domstate", dom]).1.trim().to_owned()
}

#[test]
fn rendered_exec_start_converges_the_real_libvirtd() {
    let nix = Nix::new();
    let lab = Lab::new("vfnixos");
    lab.write(&[lab.machine("a", "")]);
    let scratch = tempfile::tempdir().unwrap();
    let pkg = package(scratch.path());

    // A fleet directory whose name systemd would mangle if the module did
    // not escape it: space, %, $.
    let fleet_dir = scratch.path().join("my fleet 100% $HOME");
    std::fs::create_dir_all(&fleet_dir).unwrap();
    std::fs::copy(lab.fleet(), fleet_dir.join("fleet.dhall")).unwrap();
    std::fs::copy(
        lab.fleet().with_file_name("images.lock"),
        fleet_dir.join("images.lock"),
    )
    .unwrap();
    let key = scratch.path().join("key");
    std::fs::write(&key, "not used by a local host, but it must be readable\n").unwrap();
    let settings = |extra: Value| {
        let mut s = json!({
            "enable": true,
            "package": { "outPath": pkg },
            "fleetFile": fleet_dir.join("fleet.dhall"),
            "stateDir": scratch.path().join("state"),
            "cacheDir": lab.cache_dir(),
            "shutdownTimeout": "1s",
            "sshKeyFile": key,
        });
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        nix.render(&s).unwrap()
    };
    let creds = scratch.path().join("creds");
    let a = lab.m("a");

    // Timer mode: the oneshot converges; exit 0.
    let u = settings(json!({}));
    verify(&u, &scratch.path().join("u1")).unwrap();
    let out = run_unit(&u, &creds).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(domstate(&a), "running", "{log}");

    // A restart-class change: withheld (exit 4, which the unit counts as
    // success), the machine left running; with allowRestart it is made.
    let text = std::fs::read_to_string(lab.fleet()).unwrap();
    let stopped = text.replace(
        &lab.machine("a", ""),
        &lab.machine("a", "power = V.Power.Stopped"),
    );
    assert_ne!(stopped, text);
    std::fs::write(fleet_dir.join("fleet.dhall"), &stopped).unwrap();
    let out = run_unit(&u, &creds).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(u.values("SuccessExitStatus").contains(&"4".to_owned()));
    assert_eq!(domstate(&a), "running");
    let u = settings(json!({ "allowRestart": true }));
    let out = run_unit(&u, &creds).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(domstate(&a), "shut off", "{log}");

    // Watch mode: converges (starts it again once the fleet says so), then
    // SIGTERM (systemd's stop) ends it with 0.
    std::fs::write(fleet_dir.join("fleet.dhall"), &text).unwrap();
    let u = settings(
        json!({ "mode": "watch", "extraArgs": ["--resync", "2s", "--debounce", "100ms"] }),
    );
    verify(&u, &scratch.path().join("u2")).unwrap();
    let log_file = scratch.path().join("watch.log");
    let mut child = run_unit(&u, &creds)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while domstate(&a) != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{}",
            std::fs::read_to_string(&log_file).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "watch did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("event=shutdown"), "{log}");
}
