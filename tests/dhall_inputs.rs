//! Fleets split over several Dhall files, and inputs that are not what a
//! fleet file should be: every error names the file it is in, its line and
//! column, and the chain of imports that led there; nothing is read twice,
//! nothing is read without bound, and no evaluation runs without a budget.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use virtfleet::fleet::{EvalOptions, LoadError, load, load_with};

const PKG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");

/// A directory of Dhall files; `fleet.dhall` imports `hosts.dhall` and
/// `machines/all.dhall`, which imports `machines/web.dhall`.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        let t = Tree(tempfile::tempdir().unwrap());
        t.write(
            "fleet.dhall",
            &format!(
                "let V = {PKG}\n\
                 in  V.Fleet::{{\n\
                 \x20   , name = \"lab\"\n\
                 \x20   , hosts = ./hosts.dhall\n\
                 \x20   , images = [ V.Image::{{ name = \"deb\", url = \"http://127.0.0.1:1/d.qcow2\" }} ]\n\
                 \x20   , machines = ./machines/all.dhall\n\
                 \x20   }}\n"
            ),
        );
        t.write(
            "hosts.dhall",
            &format!(
                "let V = {PKG}\n\
                 in  [ V.Host::{{ name = \"hv1\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/srv/vf\" }} }} ]\n"
            ),
        );
        t.write(
            "machines/all.dhall",
            "-- every machine\n[ ./web.dhall\n, ./db.dhall\n]\n",
        );
        t.write("machines/web.dhall", &machine("web", "cpus = 2"));
        t.write("machines/db.dhall", &machine("db", "cpus = 1"));
        t
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fleet(&self) -> PathBuf {
        self.0.path().join("fleet.dhall")
    }

    /// The one error loading the fleet gives, with the directory stripped.
    fn error(&self) -> String {
        let prefix = format!("{}/", self.0.path().display());
        match load(&self.fleet()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string().replace(&prefix, ""),
        }
    }
}

/// `machines/NAME.dhall`: one machine; `extra` is spliced in on line 4.
fn machine(name: &str, extra: &str) -> String {
    format!(
        "let V = {PKG}\n\
         in  V.Machine::{{\n\
         \x20   , name = \"{name}\"\n\
         \x20   , {extra}\n\
         \x20   , image = \"deb\"\n\
         \x20   }}\n"
    )
}

#[test]
fn the_split_fleet_loads_and_lists_its_files() {
    let t = Tree::new();
    let loaded = load_with(&t.fleet(), &EvalOptions::default()).unwrap();
    assert_eq!(loaded.fleet.machines.len(), 2);
    let prefix = format!("{}/", t.0.path().display());
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string().replace(&prefix, ""))
        .filter(|f| !f.contains("/dhall/"))
        .collect();
    assert_eq!(
        files,
        [
            "fleet.dhall",
            "hosts.dhall",
            "machines/all.dhall",
            "machines/web.dhall",
            "machines/db.dhall"
        ]
    );
}

/// The first line of an error (the rest is the source snippet).
fn head(e: &str) -> &str {
    e.lines().next().unwrap()
}

#[test]
fn errors_inside_imported_files_name_that_file_its_line_and_the_chain() {
    let chain = "(import chain: fleet.dhall:6:18 → machines/all.dhall:3:3 → machines/db.dhall)";
    // (line 4 of db.dhall, first line of the error, source line shown).
    let cases: &[(&str, &str, &str)] = &[
        // A syntax error two imports deep.
        (
            "cpus = = 1",
            "machines/db.dhall:4:14: Dhall error: expected expression",
            "4 |     , cpus = = 1",
        ),
        // A type error in an expression.
        (
            "cpus = 1 + \"one\"",
            "machines/db.dhall:4:14: Dhall error: the operands do not have the types this operator needs (BinOpTypeMismatch)",
            "4 |     , cpus = 1 + \"one\"",
        ),
        // A field the schema does not have, reported at the record.
        (
            "cpu = 1",
            "machines/db.dhall:2:5: Dhall error: type error: the value does not match the virtfleet schema: field `cpu` is not part of the schema (misspelt?)",
            "2 | in  V.Machine::{",
        ),
        // An unbound variable.
        (
            "cpus = two",
            "machines/db.dhall:4:14: Dhall error: not found in this scope",
            "4 |     , cpus = two",
        ),
    ];
    for (extra, wanted, shown) in cases {
        let t = Tree::new();
        t.write("machines/db.dhall", &machine("db", extra));
        let e = t.error();
        assert_eq!(
            head(&e),
            format!("{wanted} {chain}"),
            "case {extra:?}:\n{e}"
        );
        // The snippet shows the imported file's line, not fleet.dhall's.
        assert!(e.contains(shown), "{e}");
    }
}

#[test]
fn an_error_in_the_fleet_file_itself_has_no_chain() {
    let t = Tree::new();
    let text = std::fs::read_to_string(t.fleet())
        .unwrap()
        .replace("name = \"lab\"", "name = \"lab\" \"x\"");
    t.write("fleet.dhall", &text);
    let e = t.error();
    assert!(head(&e).starts_with("fleet.dhall:3:"), "{e}");
    assert!(!e.contains("import chain"), "{e}");
}

#[test]
fn import_problems_are_one_sentence_naming_file_and_import() {
    let cases: &[(&str, &str, &str)] = &[
        // A cycle through two files.
        (
            "machines/db.dhall",
            "./all.dhall",
            "machines/db.dhall:1:1: imports ./all.dhall, which is machines/all.dhall again: an import cycle (Dhall files cannot import themselves, directly or through others) (import chain: fleet.dhall:6:18 → machines/all.dhall:3:3 → machines/db.dhall:1:1)",
        ),
        // A file importing itself.
        (
            "hosts.dhall",
            "./hosts.dhall",
            "hosts.dhall:1:1: imports ./hosts.dhall, which is hosts.dhall again: an import cycle (Dhall files cannot import themselves, directly or through others) (import chain: fleet.dhall:4:15 → hosts.dhall:1:1)",
        ),
        // A nested import that does not exist.
        (
            "machines/db.dhall",
            "-- moved\n../old/db.dhall",
            "machines/db.dhall:2:1: imports ../old/db.dhall, which does not exist (looked for old/db.dhall) (import chain: fleet.dhall:6:18 → machines/all.dhall:3:3)",
        ),
        // An unset environment variable.
        (
            "hosts.dhall",
            "env:VIRTFLEET_TEST_SURELY_UNSET_HOSTS",
            "hosts.dhall:1:1: imports env:VIRTFLEET_TEST_SURELY_UNSET_HOSTS, but the environment variable VIRTFLEET_TEST_SURELY_UNSET_HOSTS is not set (import chain: fleet.dhall:4:15)",
        ),
        // A directory where a file is expected.
        (
            "hosts.dhall",
            "./machines",
            "hosts.dhall:1:1: imports ./machines, which is a directory (import chain: fleet.dhall:4:15)",
        ),
        // A remote import inside an imported file.
        (
            "hosts.dhall",
            "https://example.org/hosts.dhall",
            "hosts.dhall:1: remote imports are disabled: virtfleet only evaluates local files, so a fleet cannot change behind your back; download the imported file next to the fleet and import it by path (import chain: fleet.dhall:4:15)",
        ),
    ];
    for (file, text, wanted) in cases {
        let t = Tree::new();
        t.write(file, text);
        let e = t.error();
        assert_eq!(e, *wanted, "case {file}: {text:?}");
    }
}

#[test]
fn a_guarded_import_may_be_missing() {
    let t = Tree::new();
    t.write(
        "hosts.dhall",
        &format!(
            "env:VIRTFLEET_TEST_SURELY_UNSET_HOSTS ? ./nope.dhall ? ./real-hosts.dhall\n-- {PKG}\n"
        ),
    );
    t.write(
        "real-hosts.dhall",
        &format!(
            "let V = {PKG}\n\
             in  [ V.Host::{{ name = \"hv1\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/srv/vf\" }} }} ]\n"
        ),
    );
    assert_eq!(load(&t.fleet()).unwrap().hosts.len(), 1);
}

#[test]
fn byte_order_marks_and_non_utf8_text_are_named() {
    for (file, wanted) in [
        (
            "fleet.dhall",
            "fleet.dhall:1:1: the file starts with a UTF-8 byte-order mark (BOM), which Dhall does not allow",
        ),
        (
            "machines/web.dhall",
            "machines/web.dhall:1:1: the file starts with a UTF-8 byte-order mark (BOM), which Dhall does not allow",
        ),
    ] {
        let t = Tree::new();
        let p = t.0.path().join(file);
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(std::fs::read(&p).unwrap());
        std::fs::write(&p, bytes).unwrap();
        let e = t.error();
        assert!(e.starts_with(wanted), "{file}: {e}");
    }
    let t = Tree::new();
    std::fs::write(
        t.0.path().join("hosts.dhall"),
        b"-- caf\xE9 in Latin-1\n[]\n",
    )
    .unwrap();
    assert_eq!(
        t.error(),
        "hosts.dhall:1: is not UTF-8 text (Dhall files are UTF-8) (import chain: fleet.dhall:4:15)"
    );
}

#[test]
fn what_is_not_a_file_is_refused_and_reads_are_bounded() {
    let t = Tree::new();
    let e = load(t.0.path()).unwrap_err().to_string();
    assert!(
        e.ends_with("is a directory; a fleet is read from a regular file or a pipe"),
        "{e}"
    );
    let e = load(Path::new("/dev/zero")).unwrap_err().to_string();
    assert_eq!(
        e,
        "/dev/zero: is a device; a fleet is read from a regular file or a pipe"
    );

    // Files over the limit stop being read at the limit, imported ones too.
    let small = EvalOptions {
        max_file_bytes: 4096,
        ..EvalOptions::default()
    };
    t.write(
        "hosts.dhall",
        &format!("{}\n[]", "-- padding\n".repeat(1000)),
    );
    let prefix = format!("{}/", t.0.path().display());
    let e = load_with(&t.fleet(), &small)
        .unwrap_err()
        .to_string()
        .replace(&prefix, "");
    assert_eq!(
        e,
        "hosts.dhall: is larger than 4096 bytes; a fleet this large is a mistake (or not a fleet: is it a device?) (import chain: fleet.dhall:4:15)"
    );
}

/// Makes a FIFO at `path` and writes `bytes` into it from a thread.
fn fifo(path: &Path, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    let path = path.to_owned();
    std::thread::spawn(move || {
        // The reader may stop early (size limit): a broken pipe is fine.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.write_all(&bytes);
        }
    })
}

#[test]
fn a_pipe_is_read_once() {
    // What `-f <(cat fleet.dhall)` hands over: a pipe that can be read once.
    // The package is imported by absolute path, so the current directory
    // (where a pipe's relative imports resolve) does not matter.
    let t = Tree::new();
    let text = format!(
        "let V = {PKG}\n\
         in  V.Fleet::{{ name = \"piped\", hosts = {hosts}, images = [] : List V.Image.Type, machines = [] : List V.Machine.Type }}\n",
        hosts = t.0.path().join("hosts.dhall").display()
    );
    let pipe = t.0.path().join("pipe.dhall");
    let writer = fifo(&pipe, text.into_bytes());
    let fleet = load(&pipe).unwrap();
    writer.join().unwrap();
    assert_eq!(fleet.name.as_str(), "piped");

    // An endless pipe stops at the size limit.
    let endless = t.0.path().join("endless.dhall");
    let writer = fifo(&endless, b"-- x\n".repeat(1 << 16));
    let small = EvalOptions {
        max_file_bytes: 4096,
        ..EvalOptions::default()
    };
    match load_with(&endless, &small) {
        Err(LoadError::Eval(e)) => assert!(e.to_string().contains("is larger than"), "{e}"),
        other => panic!("{other:?}"),
    }
    drop(writer);
}

#[test]
fn evaluation_stops_at_its_budget_naming_the_file() {
    let t = Tree::new();
    let tight = EvalOptions {
        budget: Duration::from_nanos(1),
        ..EvalOptions::default()
    };
    let prefix = format!("{}/", t.0.path().display());
    let e = load_with(&t.fleet(), &tight)
        .unwrap_err()
        .to_string()
        .replace(&prefix, "");
    assert!(
        e.starts_with("fleet.dhall: evaluation did not finish within 1ns;"),
        "{e}"
    );
    assert!(e.contains("VIRTFLEET_EVAL_TIMEOUT"), "{e}");
}

#[test]
fn a_large_text_imported_as_text_is_not_parsed_as_dhall() {
    // The README's advice for big cloud-init documents: a 1 MiB literal
    // would take tens of seconds to parse, an `as Text` import is read as is.
    let t = Tree::new();
    let user_data = format!("#cloud-config\n{}", "# padding line\n".repeat(70_000));
    t.write("machines/web-user-data.yaml", &user_data);
    t.write(
        "machines/web.dhall",
        &machine(
            "web",
            "cloudInit = Some V.CloudInit::{ userData = Some ./web-user-data.yaml as Text }",
        ),
    );
    let started = std::time::Instant::now();
    let fleet = load(&t.fleet()).unwrap();
    let web = fleet
        .machines
        .values()
        .find(|m| m.name.as_str() == "web")
        .unwrap();
    let got = web
        .cloud_init
        .as_ref()
        .unwrap()
        .user_data
        .as_deref()
        .unwrap();
    assert_eq!(got.len(), user_data.len());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn semantic_problems_in_imported_files_name_those_files_and_lines() {
    let t = Tree::new();
    t.write("machines/db.dhall", &machine("db", "cpus = 0"));
    t.write(
        "machines/web.dhall",
        &machine("web_1", "cpus = 2").replace("image = \"deb\"", "image = \"deb\", memoryMiB = 1"),
    );
    let prefix = format!("{}/", t.0.path().display());
    let problems: Vec<String> = match load(&t.fleet()) {
        Err(LoadError::Invalid(d)) => {
            d.0.iter()
                .map(|x| x.to_string().replace(&prefix, ""))
                .collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems,
        [
            r#"machines/web.dhall:3: machine "web_1": invalid name: "web_1" contains '_'; names may only use a-z, 0-9 and '-'"#,
            r#"machines/db.dhall:4: machine "db": cpus = 0 is too small (allowed 1..256)"#,
        ]
    );
}
