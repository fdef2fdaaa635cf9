//! Two hosts: the system libvirtd and a second, independent libvirtd
//! (tests/libvirtd-instance). Freezing the second (SIGSTOP), then stopping
//! it, mid-test must make the plan incomplete for it, never hung, while the
//! first is still planned normally.

mod common;

use common::lab::{Instance, Lab, SYSTEM, domains, virsh_ok};
use std::process::Command;

/// A process stopped with SIGSTOP, continued when dropped (also when the
/// test fails), so the daemon can be stopped cleanly afterwards.
struct Frozen(String);

impl Frozen {
    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.0])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[test]
fn an_unreachable_host_makes_the_plan_incomplete_not_failed() {
    // Declared before the lab, so the lab's cleanup runs while it is up.
    let (second, uri2) = Instance::start("/var/lib/virtfleet-tests/t-two-libvirtd");
    let mut lab = Lab::new("t-two");
    lab.add_uri(&uri2);
    let root2 = lab.root.join("h2");
    let hosts = [
        lab.host("h1", SYSTEM, &lab.root.join("h1")),
        lab.host("h2", &uri2, &root2),
    ];
    let machines = |mem: u32| {
        vec![
            lab.machine("one", &format!("host = Some \"h1\", memoryMiB = {mem}")),
            lab.machine("two", "host = Some \"h2\""),
        ]
    };
    lab.write_hosts(&hosts, &machines(128), "");
    lab.apply(&[]).expect_code(0);
    assert_eq!(domains(SYSTEM, &lab.m("")), [lab.m("one")]);
    assert_eq!(
        domains(&uri2, &lab.m("")),
        [lab.m("two")],
        "each machine on its own daemon"
    );
    assert_eq!(
        virsh_ok(&uri2, &["domstate", &lab.m("two")]).trim(),
        "running"
    );

    // Freeze the second daemon (SIGSTOP): it accepts connections and never
    // answers. Observation gives up on it after --observe-timeout; the
    // first host is still planned and the plan is incomplete, not hung.
    {
        let pid =
            std::fs::read_to_string("/var/lib/virtfleet-tests/t-two-libvirtd/runroot/libvirtd.pid")
                .unwrap();
        let frozen = Frozen(pid.trim().to_owned());
        frozen.signal("-STOP");
        let t = std::time::Instant::now();
        let out = lab
            .vf(&["--observe-timeout", "3s", "plan", "--detailed-exitcode"])
            .expect_code(3);
        let took = t.elapsed();
        assert!(out.stdout.contains("host h2: INCOMPLETE"), "{}", out.all());
        assert!(out.all().contains("no answer within 3s"), "{}", out.all());
        assert!(
            took < std::time::Duration::from_secs(60),
            "a frozen host held the plan for {took:?}"
        );
    }

    // Stop the second daemon; change a machine on the first.
    second.stop();
    lab.write_hosts(&hosts, &machines(96), "");
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(3);
    assert!(out.stdout.contains("host h2: INCOMPLETE"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("~ h1/{}", lab.m("one"))),
        "h1 still planned: {}",
        out.stdout
    );
    // apply does what it can on h1 and says the run was incomplete.
    let out = lab.apply(&[]).expect_code(3);
    assert!(out.stdout.contains("host h1: 1 of 1"), "{}", out.all());
    let status = lab.vf(&["status"]).expect_code(3);
    assert!(
        status.stdout.contains("host h2") && status.stdout.contains("UNREACHABLE"),
        "{}",
        status.stdout
    );

    // Back up: libvirtd reattaches to the still-running guest, and h2 plans clean.
    let (_again, uri) = Instance::start("/var/lib/virtfleet-tests/t-two-libvirtd");
    assert_eq!(uri, uri2);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    // Clean up while the second daemon is still up to destroy its guest.
    drop(lab);
}
