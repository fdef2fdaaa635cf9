//! `virtfleet images lock|update|fetch|verify` against a real HTTP server on
//! 127.0.0.1: user-visible output, exit codes, images.lock and the cache.

mod common;

use common::{Behaviour, FleetDir, Outcome, TestServer, free_port_refused, payload, sha256_hex};

/// More than one 256 KiB read chunk, still quick.
const SIZE: usize = 300 * 1024;

/// A server serving `payload(SIZE, 1)` at /img0.qcow2 and a fleet using it,
/// already locked; returns the served bytes too.
fn locked_fleet() -> (TestServer, FleetDir, Vec<u8>) {
    let bytes = payload(SIZE, 1);
    let server = TestServer::with([("/img0.qcow2", Behaviour::Ok(bytes.clone()))]);
    let fleet = FleetDir::new(&[("img0", &server.url("/img0.qcow2"))]);
    Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);
    assert_eq!(fleet.lock_entries()["img0"].sha256, sha256_hex(&bytes));
    (server, fleet, bytes)
}

fn no_partials(fleet: &FleetDir) {
    let files = fleet.cache_files();
    assert!(
        !files.iter().any(|f| f.starts_with('.')),
        "temporary files left in the cache: {files:?}"
    );
}

#[test]
fn lock_pins_sha256_and_size_and_caches_exact_bytes() {
    let a = payload(SIZE, 1);
    let b = payload(1000, 2);
    let server = TestServer::with([
        ("/a.qcow2", Behaviour::Ok(a.clone())),
        ("/b.qcow2", Behaviour::Ok(b.clone())),
    ]);
    let fleet = FleetDir::new(&[
        ("alpha", &server.url("/a.qcow2")),
        ("beta", &server.url("/b.qcow2")),
    ]);
    assert_eq!(fleet.lock_bytes(), None);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);
    assert!(
        out.stdout.contains("alpha: pinned") && out.stdout.contains("beta: pinned"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("2 entries written"), "{}", out.stdout);

    let lock = fleet.lock_entries();
    assert_eq!(lock.keys().collect::<Vec<_>>(), ["alpha", "beta"]);
    for (name, bytes, path) in [("alpha", &a, "/a.qcow2"), ("beta", &b, "/b.qcow2")] {
        let e = &lock[name];
        assert_eq!(e.sha256, sha256_hex(bytes), "{name}");
        assert_eq!(e.size, bytes.len() as u64, "{name}");
        assert_eq!(e.url, server.url(path), "{name}");
        assert_eq!(e.format, "qcow2", "{name}");
        assert!(
            humantime::parse_rfc3339(&e.locked).is_ok(),
            "{name}: locked {:?}",
            e.locked
        );
        assert_eq!(
            std::fs::read(fleet.cache().join(&e.sha256)).unwrap(),
            *bytes,
            "{name}: cached bytes"
        );
        assert_eq!(server.hits(path), 1);
    }
    let mut expected_cache = vec![sha256_hex(&a), sha256_hex(&b)];
    expected_cache.sort();
    assert_eq!(
        fleet.cache_files(),
        expected_cache,
        "only the two verified images are cached"
    );

    // Everything pinned: no download, lock byte-identical.
    let before = fleet.lock_bytes().unwrap();
    let hits = server.total_hits();
    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);
    assert!(out.stdout.contains("already pinned"), "{}", out.stdout);
    assert_eq!(
        server.total_hits(),
        hits,
        "a second lock must not download anything"
    );
    assert_eq!(fleet.lock_bytes().unwrap(), before);
}

#[test]
fn fetch_rejects_same_length_different_content() {
    let (server, fleet, bytes) = locked_fleet();
    let pinned = sha256_hex(&bytes);
    let lock_before = fleet.lock_bytes().unwrap();
    let mut changed = bytes.clone();
    changed[SIZE / 2] ^= 0xff;
    server.set("/img0.qcow2", Behaviour::Ok(changed.clone()));
    std::fs::remove_file(fleet.cache().join(&pinned)).unwrap();

    let out = Outcome::of(&mut fleet.cmd(&["images", "fetch"])).expect_code(1);
    assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);
    assert!(out.stderr.contains("sha256 mismatch"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&pinned) && out.stderr.contains(&sha256_hex(&changed)),
        "both hashes are named: {}",
        out.stderr
    );
    assert_eq!(server.hits("/img0.qcow2"), 2, "fetch did download");
    assert_eq!(
        fleet.cache_files(),
        Vec::<String>::new(),
        "no file for either hash, no temporary file"
    );
    assert_eq!(fleet.lock_bytes().unwrap(), lock_before);
}

#[test]
fn fetch_rejects_other_size() {
    let (server, fleet, bytes) = locked_fleet();
    let lock_before = fleet.lock_bytes().unwrap();
    std::fs::remove_file(fleet.cache().join(sha256_hex(&bytes))).unwrap();
    for other in [payload(SIZE + 10, 3), payload(SIZE - 10, 3)] {
        server.set("/img0.qcow2", Behaviour::Ok(other));
        let out = Outcome::of(&mut fleet.cmd(&["images", "fetch"])).expect_code(1);
        assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);
        assert!(out.stderr.contains("size mismatch"), "{}", out.stderr);
        assert_eq!(fleet.cache_files(), Vec::<String>::new());
        assert_eq!(fleet.lock_bytes().unwrap(), lock_before);
    }
}

#[test]
fn fetch_of_cached_image_downloads_nothing() {
    let (server, fleet, _) = locked_fleet();
    let hits = server.total_hits();
    let out = Outcome::of(&mut fleet.cmd(&["images", "fetch"])).expect_code(0);
    assert!(out.stdout.contains("img0: cached"), "{}", out.stdout);
    assert_eq!(server.total_hits(), hits);
}

#[test]
fn truncated_body_writes_nothing() {
    let bytes = payload(SIZE, 4);
    let server = TestServer::with([(
        "/t.qcow2",
        Behaviour::Truncated {
            bytes: bytes[..100_000].to_vec(),
            announced_len: SIZE as u64,
        },
    )]);
    let fleet = FleetDir::new(&[("img0", &server.url("/t.qcow2"))]);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(1);
    assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);
    assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("of {SIZE}")),
        "the announced size is named: {}",
        out.stderr
    );
    assert_eq!(fleet.lock_bytes(), None, "no lockfile was created");
    assert_eq!(fleet.cache_files(), Vec::<String>::new());
}

#[test]
fn truncated_body_leaves_existing_pin() {
    let (server, fleet, bytes) = locked_fleet();
    let lock_before = fleet.lock_bytes().unwrap();
    let cache_before = fleet.cache_files();
    server.set(
        "/t.qcow2",
        Behaviour::Truncated {
            bytes: payload(5000, 5),
            announced_len: 9000,
        },
    );
    fleet.set_images(&[("img0", &server.url("/t.qcow2"))]);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(1);
    assert!(
        out.stderr.contains("interrupted after 5000 bytes of 9000"),
        "{}",
        out.stderr
    );
    assert_eq!(fleet.lock_bytes().unwrap(), lock_before);
    assert_eq!(fleet.cache_files(), cache_before);
    assert_eq!(cache_before, [sha256_hex(&bytes)]);
}

#[test]
fn http_404_leaves_lock_alone() {
    let (server, fleet, _) = locked_fleet();
    let lock_before = fleet.lock_bytes().unwrap();
    let cache_before = fleet.cache_files();
    fleet.set_images(&[("img0", &server.url("/missing.qcow2"))]);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(1);
    assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);
    assert!(out.stderr.contains("HTTP 404"), "{}", out.stderr);
    assert_eq!(server.hits("/missing.qcow2"), 1);
    assert_eq!(fleet.lock_bytes().unwrap(), lock_before);
    assert_eq!(fleet.cache_files(), cache_before);

    // Also when nothing was pinned before.
    let fresh = FleetDir::new(&[("img0", &server.url("/missing.qcow2"))]);
    let out = Outcome::of(&mut fresh.cmd(&["images", "lock"])).expect_code(1);
    assert!(out.stderr.contains("HTTP 404"), "{}", out.stderr);
    assert_eq!(fresh.lock_bytes(), None);
    no_partials(&fresh);
    assert_eq!(fresh.cache_files(), Vec::<String>::new());
}

#[test]
fn connection_refused_leaves_lock_alone() {
    let (_server, fleet, _) = locked_fleet();
    let lock_before = fleet.lock_bytes().unwrap();
    let cache_before = fleet.cache_files();
    let url = free_port_refused();
    fleet.set_images(&[("img0", &url)]);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(1);
    assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert!(out.stderr.contains(&url), "{}", out.stderr);
    assert_eq!(fleet.lock_bytes().unwrap(), lock_before);
    assert_eq!(fleet.cache_files(), cache_before);
}

#[test]
fn update_reports_changed_hash_and_repins() {
    let (server, fleet, old) = locked_fleet();
    let new = payload(SIZE + 1, 9);
    server.set("/img0.qcow2", Behaviour::Ok(new.clone()));
    let (old_sha, new_sha) = (sha256_hex(&old), sha256_hex(&new));

    let out = Outcome::of(&mut fleet.cmd(&["images", "update"])).expect_code(0);
    assert!(
        out.stdout.contains("img0: sha256 changed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{old_sha} -> {new_sha}")),
        "{}",
        out.stdout
    );
    let e = &fleet.lock_entries()["img0"];
    assert_eq!(
        (e.sha256.as_str(), e.size),
        (new_sha.as_str(), new.len() as u64)
    );
    assert_eq!(std::fs::read(fleet.cache().join(&new_sha)).unwrap(), new);

    // Nothing changed upstream: "unchanged", lock byte-identical.
    let before = fleet.lock_bytes().unwrap();
    let out = Outcome::of(&mut fleet.cmd(&["images", "update", "img0"])).expect_code(0);
    assert!(out.stdout.contains("img0: unchanged"), "{}", out.stdout);
    assert!(
        out.stdout.contains("images.lock: unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(fleet.lock_bytes().unwrap(), before);
}

#[test]
fn update_of_unknown_image_fails() {
    let (_server, fleet, _) = locked_fleet();
    let before = fleet.lock_bytes().unwrap();
    let out = Outcome::of(&mut fleet.cmd(&["images", "update", "nope"])).expect_code(1);
    assert!(
        out.stderr.contains("\"nope\"") && out.stderr.contains("img0"),
        "{}",
        out.stderr
    );
    assert_eq!(fleet.lock_bytes().unwrap(), before);
}

#[test]
fn verify_deletes_corrupted_cache_file_and_fetch_restores_it() {
    let (server, fleet, bytes) = locked_fleet();
    let sha = sha256_hex(&bytes);
    let cached = fleet.cache().join(&sha);
    std::fs::write(&cached, payload(SIZE, 77)).unwrap();

    let out = Outcome::of(&mut fleet.cmd(&["images", "verify"])).expect_code(1);
    let text = out.all();
    assert!(
        text.contains("corrupted") && text.contains("img0"),
        "{text}"
    );
    assert!(!cached.exists(), "the corrupted file is deleted");

    let out = Outcome::of(&mut fleet.cmd(&["images", "fetch"])).expect_code(0);
    assert!(
        out.stdout.contains("img0: fetched and verified"),
        "{}",
        out.stdout
    );
    assert_eq!(server.hits("/img0.qcow2"), 2);
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);

    let out = Outcome::of(&mut fleet.cmd(&["images", "verify"])).expect_code(0);
    assert!(
        out.stdout.contains(&format!("ok        {sha}  img0")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("0 corrupted"), "{}", out.stdout);
}

#[test]
fn verify_reports_missing_images() {
    let (_server, fleet, bytes) = locked_fleet();
    std::fs::remove_file(fleet.cache().join(sha256_hex(&bytes))).unwrap();
    let out = Outcome::of(&mut fleet.cmd(&["images", "verify"])).expect_code(0);
    assert!(
        out.stdout.contains("missing") && out.stdout.contains("img0"),
        "{}",
        out.stdout
    );
}

#[test]
fn file_urls_are_refused_and_nothing_is_written() {
    let fleet = FleetDir::new(&[("img0", "file:///srv/images/img0.qcow2")]);

    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(1);
    assert!(out.stderr.contains("file://"), "{}", out.stderr);
    assert!(out.stderr.contains("image \"img0\""), "{}", out.stderr);

    let out = Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(1);
    assert!(out.stderr.contains("file://"), "{}", out.stderr);

    assert_eq!(fleet.lock_bytes(), None);
    assert!(
        !fleet.cache().exists(),
        "the cache directory was not even created"
    );
    let written: Vec<String> = common::dir_names(fleet.dir.path())
        .into_iter()
        .filter(|n| n != "home")
        .collect();
    assert_eq!(
        written,
        ["fleet.dhall"],
        "nothing besides the fleet (and the scratch HOME)"
    );
}

/// `n` bytes that start like a qcow2 image declaring a `virtual_gib` disk.
fn qcow2_like(n: usize, virtual_gib: u64) -> Vec<u8> {
    let mut bytes = b"QFI\xfb\0\0\0\x03".to_vec();
    bytes.resize(24, 0);
    bytes.extend_from_slice(&(virtual_gib << 30).to_be_bytes());
    bytes.extend(payload(n - bytes.len(), 7));
    bytes
}

#[test]
fn lock_records_the_qcow2_disk_size_and_check_refuses_smaller_root_disks() {
    let server = TestServer::with([("/big.qcow2", Behaviour::Ok(qcow2_like(SIZE, 20)))]);
    let fleet = FleetDir::new(&[("big", &server.url("/big.qcow2"))]);
    Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);
    let lock = String::from_utf8(fleet.lock_bytes().unwrap()).unwrap();
    assert!(
        lock.lines()
            .any(|l| l == format!("  vsize   {}", 20u64 << 30)),
        "{lock}"
    );

    // The machine keeps the default 10 GiB root disk: too small for 20 GiB.
    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(1);
    assert!(
        out.stderr.contains(
            "machine \"vm-big\": diskGiB = 10 is smaller than image \"big\", whose disk is 20 GiB (21474836480 bytes, pinned in images.lock); set diskGiB to at least 20"
        ),
        "{}",
        out.stderr
    );
    let line = out.stderr.lines().find(|l| l.contains("vm-big")).unwrap();
    assert!(
        line.trim_start()
            .starts_with(&format!("{}:", fleet.fleet().display())),
        "{line}"
    );

    let text = std::fs::read_to_string(fleet.fleet())
        .unwrap()
        .replace("image = \"big\" }", "image = \"big\", diskGiB = 20 }");
    std::fs::write(fleet.fleet(), text).unwrap();
    Outcome::of(&mut fleet.cmd(&["check"])).expect_code(0);
}
