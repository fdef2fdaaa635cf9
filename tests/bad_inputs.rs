//! A table of bad fleets and lockfiles: each must be rejected with the exact
//! message a user sees, naming the file, the line when a literal exists,
//! and the host / image / machine / field at fault. Every problem of a file
//! is reported in one run.

use std::path::{Path, PathBuf};
use virtfleet::fleet::{LoadError, load};
use virtfleet::lock::ImageLock;

const PKG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");

/// A valid fleet; cases replace parts of it. Line numbers in the
/// expectations refer to this layout.
fn base() -> String {
    format!(
        r#"let V = {PKG}
in  V.Fleet::{{
    , name = "lab"
    , hosts =
      [ V.Host::{{ name = "hv1", uri = "qemu:///system", storage = V.Storage.Dir {{ path = "/srv/vf" }}
        , capacity = Some {{ cpus = 4, memoryMiB = 8192 }}
        }}
      , V.Host::{{ name = "hv2", uri = "qemu+ssh://root@hv2/system", storage = V.Storage.Zfs {{ parent = "tank/vms" }} }}
      ]
    , images = [ V.Image::{{ name = "deb", url = "http://127.0.0.1:1/deb.qcow2" }} ]
    , machines =
      [ V.Machine::{{ name = "web", host = Some "hv1", image = "deb"
        , memoryMiB = 2048
        }}
      , V.Machine::{{ name = "db", host = Some "hv2", image = "deb", cpus = 2 }}
      ]
    }}
"#
    )
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn dir() -> Dir {
    Dir(tempfile::tempdir().unwrap())
}

/// Loads `text` as fleet.dhall and returns every error line, with the temp
/// directory stripped so expectations read `fleet.dhall:LINE: ...`.
fn errors(text: &str) -> Vec<String> {
    let d = dir();
    let path = d.write("fleet.dhall", text);
    let prefix = format!("{}/", d.0.path().display());
    match load(&path) {
        Ok(_) => panic!("expected the fleet to be rejected:\n{text}"),
        Err(LoadError::Invalid(diags)) => diags
            .0
            .iter()
            .map(|x| x.to_string().replace(&prefix, ""))
            .collect(),
        Err(other) => vec![other.to_string().replace(&prefix, "")],
    }
}

/// The first line of each error: the message without its source snippet.
fn first_lines(errors: Vec<String>) -> Vec<String> {
    errors
        .iter()
        .map(|e| e.lines().next().unwrap_or("").to_owned())
        .collect()
}

fn with(from: &str, to: &str) -> String {
    let b = base();
    assert!(b.contains(from), "case does not apply: {from}");
    b.replacen(from, to, 1)
}

#[test]
fn the_base_fleet_is_valid() {
    let d = dir();
    let fleet = load(&d.write("fleet.dhall", &base())).unwrap();
    assert_eq!(fleet.machines.len(), 2);
    assert_eq!(
        fleet
            .machines
            .values()
            .map(|m| m.host.as_str())
            .collect::<Vec<_>>(),
        ["hv2", "hv1"]
    );
}

#[test]
fn dhall_syntax_error_names_file_line_and_column() {
    let e = errors(&with(r#", memoryMiB = 2048"#, ", memoryMiB = = 2048"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("fleet.dhall:13:23: Dhall error:"),
        "{}",
        e[0]
    );
}

#[test]
fn dhall_type_error_names_the_field() {
    let e = first_lines(errors(&with(
        r#", memoryMiB = 2048"#,
        r#", memoryMiB = "2G""#,
    )));
    assert_eq!(
        e,
        [
            "fleet.dhall:12:9: Dhall error: type error: the value does not match the virtfleet schema: field `memoryMiB` is Text, but the schema wants Natural"
        ]
    );
}

#[test]
fn misspelt_field_is_named() {
    let e = first_lines(errors(&with(r#", memoryMiB = 2048"#, ", memoryMb = 2048")));
    assert_eq!(
        e,
        [
            "fleet.dhall:12:9: Dhall error: type error: the value does not match the virtfleet schema: field `memoryMb` is not part of the schema (misspelt?)"
        ]
    );
}

#[test]
fn remote_import_is_refused_with_its_line() {
    let e = errors(&base().replace(
        "in  V.Fleet",
        "let P = https://prelude.dhall-lang.org/v20.0.0/package.dhall\nin  V.Fleet",
    ));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("fleet.dhall:2: remote imports are disabled"),
        "{}",
        e[0]
    );
}

#[test]
fn missing_local_import_is_an_error_not_a_crash() {
    let e = errors(&base().replace(PKG, "./nope/package.dhall"));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("fleet.dhall"), "{}", e[0]);
}

#[test]
fn semantic_errors_are_all_reported_at_once_with_places() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#"name = "web""#,
            r#"name = "web_1""#,
            &[
                r#"fleet.dhall:12: machine "web_1": invalid name: "web_1" contains '_'; names may only use a-z, 0-9 and '-'"#,
            ],
        ),
        (
            r#"name = "db""#,
            r#"name = "web""#,
            &[r#"fleet.dhall:15: machine "web": declared more than once"#],
        ),
        (
            r#"name = "hv2""#,
            r#"name = "hv1""#,
            &[
                r#"fleet.dhall:8: host "hv1": declared more than once"#,
                r#"fleet.dhall:15: machine "db": unknown host "hv2" (hosts: hv1)"#,
            ],
        ),
        (
            r#"host = Some "hv2""#,
            r#"host = Some "hv9""#,
            &[r#"fleet.dhall:15: machine "db": unknown host "hv9" (hosts: hv1, hv2)"#],
        ),
        (
            r#"image = "deb", cpus"#,
            r#"image = "ubuntu", cpus"#,
            &[r#"fleet.dhall:15: machine "db": unknown image "ubuntu" (images: deb)"#],
        ),
        (
            ", memoryMiB = 2048",
            ", memoryMiB = 0",
            &[
                r#"fleet.dhall:13: machine "web": memoryMiB = 0 is too small (allowed 64..4194304 MiB)"#,
            ],
        ),
        (
            ", memoryMiB = 2048",
            ", memoryMiB = 2048, diskGiB = 100000",
            &[
                r#"fleet.dhall:13: machine "web": diskGiB = 100000 is too large (allowed 1..65536 GiB)"#,
            ],
        ),
        (
            "memoryMiB = 8192 }",
            "memoryMiB = 8192 }, concurrency = Some 0",
            &[
                r#"fleet.dhall:6: host "hv1": concurrency = 0 is too small (allowed 1..64 steps at once)"#,
            ],
        ),
        (
            "cpus = 2 }",
            "cpus = 0 }",
            &[r#"fleet.dhall:15: machine "db": cpus = 0 is too small (allowed 1..256)"#],
        ),
        (
            ", memoryMiB = 2048",
            ", memoryMiB = 2048, cpus = 8",
            &[r#"fleet.dhall:13: machine "web": cpus = 8 exceeds host "hv1"'s capacity of 4 CPUs"#],
        ),
        (
            ", memoryMiB = 2048",
            ", memoryMiB = 9000",
            &[
                r#"fleet.dhall:5: host "hv1": machines web need 9000 MiB of memory together, over the capacity of 8192 MiB"#,
            ],
        ),
        (
            ", memoryMiB = 2048",
            ", memoryMiB = 2048, snapshots = V.Snapshots::{ hourly = 1000, monthly = 241 }",
            &[
                r#"fleet.dhall:13: machine "web": hourly = 1000 is too large (allowed 0..720 snapshots)"#,
                r#"fleet.dhall:13: machine "web": monthly = 241 is too large (allowed 0..240 snapshots)"#,
            ],
        ),
        (
            r#"url = "http://127.0.0.1:1/deb.qcow2""#,
            r#"url = "ftp://x/deb.qcow2""#,
            &[
                r#"fleet.dhall:10: image "deb": url "ftp://x/deb.qcow2" must be an http:// or https:// URL"#,
            ],
        ),
        (
            r#"parent = "tank/vms""#,
            r#"parent = "/tank/vms""#,
            &[
                r#"fleet.dhall:8: host "hv2": storage Zfs parent "/tank/vms" must be a dataset path like tank/vms (no leading or trailing '/')"#,
            ],
        ),
        (
            r#"path = "/srv/vf""#,
            r#"path = "srv/vf""#,
            &[
                r#"fleet.dhall:5: host "hv1": storage Dir path "srv/vf" must be an absolute path (start with '/')"#,
            ],
        ),
        (
            ", memoryMiB = 2048",
            r#", memoryMiB = 2048, dataDisks = [ V.Disk::{ name = "root", sizeGiB = 5 }, V.Disk::{ name = "logs", sizeGiB = 0 } ]"#,
            &[
                r#"fleet.dhall:13: machine "web" disk "root": the name `root` is reserved for the root disk"#,
                r#"fleet.dhall:13: machine "web" disk "logs": sizeGiB = 0 is too small (allowed 1..65536 GiB)"#,
            ],
        ),
    ];
    for (from, to, expected) in cases {
        assert_eq!(
            errors(&with(from, to)),
            *expected,
            "case {from:?} -> {to:?}"
        );
    }
}

#[test]
fn two_machines_claiming_one_disk_volume() {
    // "a" with data disk "b-root" and machine "a-b" both map to volume a-b-root on hv2.
    let text = with(
        r#"V.Machine::{ name = "db", host = Some "hv2", image = "deb", cpus = 2 }"#,
        r#"V.Machine::{ name = "a", host = Some "hv2", image = "deb", dataDisks = [ V.Disk::{ name = "b-root", sizeGiB = 1 } ] }
      , V.Machine::{ name = "a-b", host = Some "hv2", image = "deb" }"#,
    );
    assert_eq!(
        errors(&text),
        [
            r#"fleet.dhall:16: machine "a-b" disk "root": its volume "a-b-root" on host "hv2" is also claimed by machine "a" disk "b-root"; rename one of them"#
        ]
    );
}

#[test]
fn many_problems_are_reported_in_one_run() {
    let text = with(", memoryMiB = 2048", ", memoryMiB = 1, cpus = 999")
        .replace(r#"image = "deb", cpus = 2"#, r#"image = "nope", cpus = 2"#);
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
}

fn lock_errors(text: &str) -> Vec<String> {
    ImageLock::parse(text, Path::new("images.lock"))
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect()
}

const GOOD_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn lock_with_malformed_hash_names_the_line() {
    let text = format!(
        "format 1\n\nimage deb\n  url     http://h/deb\n  sha256  {}\n  size    4\n  format  qcow2\n  locked  2026-11-22T10:00:00Z\n",
        &GOOD_SHA[..63]
    );
    assert_eq!(
        lock_errors(&text),
        [format!(
            "images.lock:5: image \"deb\": sha256 \"{}\" must be 64 lowercase hex digits",
            &GOOD_SHA[..63]
        )]
    );
    let upper = text.replace(&GOOD_SHA[..63], &GOOD_SHA.to_uppercase());
    assert_eq!(lock_errors(&upper).len(), 1);
}

#[test]
fn lock_missing_fields_and_garbage_lines() {
    let text = "format 1\nimage deb\n  url http://h/deb\nwhat is this\n";
    assert_eq!(
        lock_errors(text),
        [
            "images.lock:4: cannot read line \"what is this\": expected `format N`, `image NAME` or an indented `url|sha256|size|vsize|format|locked VALUE`",
            "images.lock:2: image \"deb\": missing `sha256`",
            "images.lock:2: image \"deb\": missing `size`",
            "images.lock:2: image \"deb\": missing `format`",
            "images.lock:2: image \"deb\": missing `locked`",
        ]
    );
    assert_eq!(
        lock_errors("format 2\n"),
        [
            "images.lock:1: lock format 2 is not supported by this virtfleet (it reads format 1); upgrade virtfleet"
        ]
    );
}

#[test]
fn lock_missing_an_image_of_the_fleet() {
    let d = dir();
    let fleet = load(&d.write("fleet.dhall", &base())).unwrap();
    let lock = ImageLock::parse("format 1\n", Path::new("images.lock")).unwrap();
    let problems: Vec<String> = lock
        .check_against(&fleet, Path::new("images.lock"))
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(
        problems,
        [r#"images.lock: image "deb": not pinned; run `virtfleet images lock`"#]
    );

    let moved = format!(
        "format 1\n\nimage deb\n  url     http://mirror/deb.qcow2\n  sha256  {GOOD_SHA}\n  size    4\n  format  qcow2\n  locked  2026-11-22T10:00:00Z\n"
    );
    let lock = ImageLock::parse(&moved, Path::new("images.lock")).unwrap();
    let problems: Vec<String> = lock
        .check_against(&fleet, Path::new("images.lock"))
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(
        problems,
        [
            r#"images.lock: image "deb": pinned from http://mirror/deb.qcow2 but the fleet now says http://127.0.0.1:1/deb.qcow2; run `virtfleet images lock` to re-pin it"#
        ]
    );
}

/// Runs each `(from, to, expected substrings)` case on the base fleet and
/// expects exactly one error, at `line`, containing every substring.
fn one_error_each(cases: &[(&str, &str, usize, &[&str])]) {
    for (from, to, line, wanted) in cases {
        let e = errors(&with(from, to));
        assert_eq!(e.len(), 1, "case {from:?} -> {to:?}: {e:#?}");
        let prefix = format!("fleet.dhall:{line}: ");
        assert!(e[0].starts_with(&prefix), "case {to:?}: {}", e[0]);
        for w in *wanted {
            assert!(e[0].contains(w), "case {to:?}: wanted {w:?} in {}", e[0]);
        }
    }
}

const HV2_URI: &str = r#"uri = "qemu+ssh://root@hv2/system""#;

#[test]
fn host_uris_must_be_a_supported_libvirt_form() {
    let supported = "virtfleet supports qemu:///system";
    one_error_each(&[
        // Malformed authorities.
        (
            HV2_URI,
            r#"uri = "qemu+ssh://admin@hv2:ssh/system""#,
            8,
            &[r#"host "hv2""#, "port \"ssh\"", supported],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://@hv2/system""#,
            8,
            &["user name \"\""],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+libssh2://root@/system""#,
            8,
            &["no host name"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@[::1/system""#,
            8,
            &["unclosed '['"],
        ),
        // Spaces, control characters and shell metacharacters.
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2 /system""#,
            8,
            &["contains ' '"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2\t/system""#,
            8,
            &["contains '\\t'"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2&&id/system""#,
            8,
            &["host \"hv2&&id\""],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2/system?keyfile=`id`""#,
            8,
            &["'`' in the value of keyfile"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2/system?command=/bin/sh""#,
            8,
            &["parameter \"command\""],
        ),
        // Drivers, transports and paths virtfleet cannot drive.
        (
            HV2_URI,
            r#"uri = "ftp://hv2/system""#,
            8,
            &["the \"ftp\" driver", supported],
        ),
        (
            HV2_URI,
            r#"uri = "lxc:///system""#,
            8,
            &["the \"lxc\" driver"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ext:///system""#,
            8,
            &["\"ext\" transport"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+unix://hv2/system""#,
            8,
            &["qemu+unix:// is local"],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh://root@hv2/sys""#,
            8,
            &["path \"/sys\""],
        ),
        (
            HV2_URI,
            r#"uri = "qemu+ssh:root@hv2""#,
            8,
            &["is not a URI"],
        ),
        // Reaching libvirt without SSH leaves the disks unreachable.
        (
            HV2_URI,
            r#"uri = "qemu+tls://hv2/system""#,
            8,
            &["set sshTarget"],
        ),
    ]);
}

#[test]
fn host_uris_virtfleet_supports_load() {
    for uri in [
        "qemu:///session",
        "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
        "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/root/.ssh/id_ed25519&known_hosts=/k",
        "qemu+libssh://admin@[2001:db8::1]:22/system",
    ] {
        let text = with(HV2_URI, &format!("uri = {uri:?}"));
        let d = dir();
        assert!(load(&d.write("fleet.dhall", &text)).is_ok(), "{uri}");
    }
    let tls = with(
        HV2_URI,
        r#"uri = "qemu+tls://hv2/system", sshTarget = Some "root@hv2""#,
    );
    assert!(load(&dir().write("fleet.dhall", &tls)).is_ok());
}

#[test]
fn ssh_targets_are_checked_at_check_time() {
    let at = |t: &str| format!("{HV2_URI}, sshTarget = Some {t:?}");
    let expect = "expected [user@]host[:port]";
    one_error_each(&[
        (
            HV2_URI,
            &at("admin@hv2 && shutdown"),
            8,
            &[r#"host "hv2""#, "sshTarget", "contains ' '", expect],
        ),
        (
            HV2_URI,
            &at("admin@hv2:twentytwo"),
            8,
            &["port \"twentytwo\""],
        ),
        (HV2_URI, &at("admin@hv2:70000"), 8, &["port \"70000\""]),
        (
            HV2_URI,
            &at("-oProxyCommand=id"),
            8,
            &["host \"-oProxyCommand=id\""],
        ),
        (HV2_URI, &at("admin@"), 8, &["no host name"]),
        (HV2_URI, &at("a|b@hv2"), 8, &["user name \"a|b\""]),
    ]);
}

#[test]
fn storage_locations_follow_zfs_rules_and_stay_out_of_system_directories() {
    let zfs = r#"parent = "tank/vms""#;
    let dir = r#"path = "/srv/vf""#;
    one_error_each(&[
        (
            zfs,
            r#"parent = "tank/vms/..""#,
            8,
            &[
                r#"host "hv2""#,
                r#"storage Zfs parent "tank/vms/..""#,
                "\"..\" component",
            ],
        ),
        (zfs, r#"parent = "tank/./vms""#, 8, &["\".\" component"]),
        (zfs, r#"parent = "tank/vms@now""#, 8, &["'@'"]),
        (zfs, r#"parent = "tank/my vms""#, 8, &["' '"]),
        (zfs, r#"parent = "9tank/vms""#, 8, &["starts with a letter"]),
        (zfs, r#"parent = "spare1/vms""#, 8, &["ZFS reserves"]),
        (zfs, r#"parent = "tank//vms""#, 8, &["empty component"]),
        (
            dir,
            r#"path = "/""#,
            5,
            &[
                r#"host "hv1""#,
                r#"storage Dir path "/""#,
                "system or shared directory",
            ],
        ),
        (
            dir,
            r#"path = "/var/lib/libvirt/images""#,
            5,
            &["system or shared directory"],
        ),
        (dir, r#"path = "/usr/share/vf""#, 5, &["inside /usr"]),
        (dir, r#"path = "/proc/vf""#, 5, &["inside /proc"]),
        (
            dir,
            r#"path = "/srv/vf\nx""#,
            5,
            &["control character '\\n'"],
        ),
        (dir, r#"path = "/srv/../vf""#, 5, &["'..' components"]),
        (dir, r#"path = "/srv/vf/""#, 5, &["trailing '/'"]),
    ]);
}

#[test]
fn name_lengths_are_counted_and_reported_in_bytes() {
    // 32 characters of two bytes each: short in characters, long in bytes.
    let wide = "é".repeat(32);
    let e = errors(&with(r#"name = "db""#, &format!("name = {wide:?}")));
    assert_eq!(
        e,
        [format!(
            r#"fleet.dhall:15: machine {wide:?}: invalid name: {wide:?} is 64 bytes long; the limit is 63 bytes"#
        )]
    );
}

#[test]
fn huge_values_are_cut_in_messages() {
    // A 1 MiB name built by a Dhall function (a literal that size parses slowly).
    let text = with(r#"name = "db""#, "name = big").replace(
        "in  V.Fleet",
        "let twice = \\(t : Text) -> t ++ t\nlet big = Natural/fold 20 Text twice \"x\"\nin  V.Fleet",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{}", e.len());
    assert!(e[0].len() < 400, "{} bytes: {}", e[0].len(), &e[0][..400]);
    assert!(e[0].contains("… (1048576 bytes)"), "{}", e[0]);
}

#[test]
fn a_refused_declaration_is_reported_once_not_echoed_by_its_users() {
    // The only host has a bad name: no "no host given / 0 hosts" follows.
    let single = format!(
        r#"let V = {PKG}
in  V.Fleet::{{
    , name = "lab"
    , hosts = [ V.Host::{{ name = "HV1", uri = "qemu:///system", storage = V.Storage.Dir {{ path = "/srv/vf" }} }} ]
    , images = [ V.Image::{{ name = "deb", url = "http://127.0.0.1:1/deb.qcow2" }} ]
    , machines = [ V.Machine::{{ name = "web", image = "deb" }} ]
    }}
"#
    );
    let e = errors(&single);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(r#"fleet.dhall:4: host "HV1": invalid name"#),
        "{}",
        e[0]
    );

    // A machine naming a refused host or image gets no "unknown host/image".
    let text = with(r#"name = "hv2""#, r#"name = "hv_2""#)
        .replace(r#"host = Some "hv2""#, r#"host = Some "hv_2""#)
        .replace(r#"name = "deb""#, r#"name = "Deb""#)
        .replace(r#"image = "deb""#, r#"image = "Deb""#);
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains(r#"host "hv_2": invalid name"#), "{}", e[0]);
    assert!(e[1].contains(r#"image "Deb": invalid name"#), "{}", e[1]);
}

/// A lock pinning image `deb` of the base fleet with `size`, `format` and
/// optionally `vsize`.
fn lock_text(size: u64, format: &str, vsize: Option<u64>) -> String {
    let vsize = vsize
        .map(|v| format!("  vsize   {v}\n"))
        .unwrap_or_default();
    format!(
        "format 1\n\nimage deb\n  url     http://127.0.0.1:1/deb.qcow2\n  sha256  {GOOD_SHA}\n  size    {size}\n{vsize}  format  {format}\n  locked  2026-11-22T10:00:00Z\n"
    )
}

#[test]
fn root_disks_smaller_than_their_pinned_image_are_refused() {
    const GIB: u64 = 1 << 30;
    let raw_fleet = base().replace(
        r#"url = "http://127.0.0.1:1/deb.qcow2""#,
        r#"url = "http://127.0.0.1:1/deb.qcow2", format = V.ImageFormat.Raw"#,
    );
    // (fleet, lock, expected problems). Machines: web (diskGiB on line 13),
    // db (the default 10 GiB, not written: its record's line 15).
    let cases: Vec<(String, String, Vec<String>)> = vec![
        // qcow2 with a recorded virtual size above 10 GiB: both refused.
        (
            with(", memoryMiB = 2048", ", memoryMiB = 2048, diskGiB = 10"),
            lock_text(300 << 20, "qcow2", Some(12 * GIB + 1)),
            vec![
                r#"fleet.dhall:15: machine "db": diskGiB = 10 is smaller than image "deb", whose disk is 12.0 GiB (12884901889 bytes, pinned in images.lock); set diskGiB to at least 13"#.to_owned(),
                r#"fleet.dhall:13: machine "web": diskGiB = 10 is smaller than image "deb", whose disk is 12.0 GiB (12884901889 bytes, pinned in images.lock); set diskGiB to at least 13"#.to_owned(),
            ],
        ),
        // Exactly the image's size fits.
        (base(), lock_text(300 << 20, "qcow2", Some(10 * GIB)), vec![]),
        // qcow2 without a recorded virtual size: nothing to compare with.
        (base(), lock_text(300 << 20, "qcow2", None), vec![]),
        // Raw: the image's size is its disk.
        (
            raw_fleet.replace("cpus = 2 }", "cpus = 2, diskGiB = 2 }"),
            lock_text(3 * GIB, "raw", None),
            vec![r#"fleet.dhall:15: machine "db": diskGiB = 2 is smaller than image "deb", whose disk is 3 GiB (3221225472 bytes, pinned in images.lock); set diskGiB to at least 3"#.to_owned()],
        ),
    ];
    for (i, (fleet_text, lock, expected)) in cases.into_iter().enumerate() {
        let d = dir();
        let prefix = format!("{}/", d.0.path().display());
        let fleet = load(&d.write("fleet.dhall", &fleet_text)).unwrap();
        let lock = ImageLock::parse(&lock, Path::new("images.lock")).unwrap();
        let problems: Vec<String> = lock
            .check_against(&fleet, Path::new("images.lock"))
            .iter()
            .map(|x| x.to_string().replace(&prefix, ""))
            .collect();
        assert_eq!(problems, expected, "case {i}");
    }
}

#[test]
fn placement_mistakes_name_the_machine_and_field() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#"host = Some "hv2""#,
            r#"host = None Text, hosts = [ "hv1", "hv7" ]"#,
            &[r#"fleet.dhall:15: machine "db": unknown host "hv7" (hosts: hv1, hv2)"#],
        ),
        (
            r#"host = Some "hv2""#,
            r#"host = None Text, hostLabels = [ "gpu" ]"#,
            &[
                r#"fleet.dhall:15: machine "db": no allowed host carries every label of hostLabels [gpu] (host labels: hv1: []; hv2: [])"#,
            ],
        ),
        (
            r#"host = Some "hv2""#,
            r#"host = Some "hv2", hosts = [ "hv1" ]"#,
            &[
                r#"fleet.dhall:15: machine "db": `host` fixes the machine's host: leave `hosts` and `hostLabels` empty, or set `host = None Text` to let the planner choose"#,
            ],
        ),
        (
            r#"name = "lab""#,
            r#"name = "lab", settings = V.Settings::{ cpuOvercommit = 0 }"#,
            &[r#"fleet.dhall:3: settings: cpuOvercommit = 0 is out of range (allowed 1..64)"#],
        ),
    ];
    for (from, to, want) in cases {
        let got = first_lines(errors(&with(from, to)));
        assert_eq!(&got, want, "case {to}");
    }
}
