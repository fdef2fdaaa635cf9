//! Which of one host's changes may run at the same time, and running them
//! with a bound on how many are in flight.
//!
//! The plan lists a host's changes in an order that works when they run one
//! by one. Two rules keep every dependency in that order while letting
//! independent work overlap:
//!
//! - the changes of one machine run in plan order, one at a time (disk
//!   before define before start; stop before destroy; snapshot before
//!   rollback), since each may depend on the one before;
//! - a change that concerns no machine (a base image, crash cleanup) is a
//!   barrier: it waits for every change before it, and every change after
//!   it waits for it (the disks made from an image need the image).
//!
//! Different machines share nothing else on a host (each has its own
//! domain and its own disks), so their chains run side by side, at most
//! `concurrency` steps at once. Slow waits overlap: ten guests that ignore
//! ACPI take one shutdown timeout, not ten.
//!
//! After a failure nothing new starts on the host (steps in flight finish);
//! every change not started is skipped, as in a sequential run.

use std::collections::BTreeMap;
use std::sync::mpsc;

/// The default bound on steps in flight per host. Most of a step is waiting
/// (on libvirt and QEMU for a start or a destroy, on the guest for an ACPI
/// shutdown), so the bound is about a dozen guests' worth: ten guests that
/// ignore ACPI still share one timeout. The heavy steps (base images) are
/// barriers and never overlap anything.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// For each change, the indices of the earlier changes it waits for,
/// sorted. `machines[i]` is change `i`'s machine (`None`: a barrier).
///
/// A barrier waits for the previous barrier and for the last change of each
/// machine since then: a machine's changes succeed in order, so its last
/// one done means all of them are (this keeps the lists short).
pub fn dependencies(machines: &[Option<&str>]) -> Vec<Vec<usize>> {
    let mut last_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut barrier: Option<usize> = None;
    let mut deps = Vec::with_capacity(machines.len());
    for (i, m) in machines.iter().enumerate() {
        match m {
            Some(m) => {
                let mut d: Vec<usize> = barrier.into_iter().collect();
                if let Some(prev) = last_of.insert(m, i) {
                    d.push(prev);
                }
                deps.push(d);
            }
            None => {
                let mut d: Vec<usize> = barrier
                    .into_iter()
                    .chain(last_of.values().copied())
                    .collect();
                d.sort_unstable();
                deps.push(d);
                barrier = Some(i);
                last_of.clear();
            }
        }
    }
    deps
}

/// How one change went, as far as the scheduler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// It succeeded: changes waiting for it may start.
    Ok,
    /// It failed, or was refused before it started: nothing new starts.
    Failed,
}

/// Runs `n` changes with dependencies `deps`, at most `concurrency` at once.
///
/// `admit(i)` is called on this thread just before change `i` would start;
/// returning `Some(Done::Failed)` records it as failed without running it
/// (a lapsed lease), `None` lets it start. `work(i)` runs on its own thread.
/// `stop()` is asked before each start: true skips everything not started
/// (another host failed). Returns each change's result, `None` for the
/// ones never started.
pub fn run<R: Send>(
    deps: &[Vec<usize>],
    concurrency: usize,
    mut admit: impl FnMut(usize) -> Option<(Done, R)>,
    stop: impl Fn() -> bool,
    work: impl Fn(usize) -> (Done, R) + Sync,
) -> Vec<Option<R>> {
    let n = deps.len();
    let concurrency = concurrency.max(1);
    let mut status: Vec<Option<Done>> = vec![None; n];
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    // Not started yet, in plan order.
    let mut waiting: Vec<usize> = (0..n).collect();
    let mut failed = false;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, (Done, R))>();
        let work = &work;
        let mut running = 0;
        loop {
            // Start every ready change the bound allows, in plan order.
            while !failed && running < concurrency && !stop() {
                let ready = waiting
                    .iter()
                    .position(|&i| deps[i].iter().all(|&d| status[d] == Some(Done::Ok)));
                let Some(at) = ready else { break };
                let i = waiting.remove(at);
                if let Some((done, r)) = admit(i) {
                    status[i] = Some(done);
                    results[i] = Some(r);
                    failed |= done == Done::Failed;
                    continue;
                }
                running += 1;
                let tx = tx.clone();
                s.spawn(move || {
                    let _ = tx.send((i, work(i)));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((i, (done, r))) = rx.recv() else { break };
            running -= 1;
            status[i] = Some(done);
            results[i] = Some(r);
            failed |= done == Done::Failed;
        }
    });
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[test]
    fn chains_per_machine_and_barriers() {
        let m = [
            None,
            Some("a"),
            Some("b"),
            Some("a"),
            None,
            Some("b"),
            Some("a"),
        ];
        let d = dependencies(&m);
        assert_eq!(d[0], Vec::<usize>::new());
        assert_eq!(d[1], vec![0]);
        assert_eq!(d[2], vec![0]);
        assert_eq!(d[3], vec![0, 1], "a's second change waits for its first");
        assert_eq!(
            d[4],
            vec![0, 2, 3],
            "a barrier waits for the last barrier and each machine's last change"
        );
        assert_eq!(
            d[5],
            vec![4],
            "b after the barrier waits for the barrier only"
        );
        assert_eq!(d[6], vec![4]);
    }

    /// Independent machines overlap up to the bound; one machine's changes
    /// never overlap and keep their order.
    #[test]
    fn bounded_overlap_keeps_each_machine_in_order() {
        let machines: Vec<Option<&str>> = ["a", "b", "c", "d", "a", "b", "c", "d"]
            .iter()
            .map(|m| Some(*m))
            .collect();
        let deps = dependencies(&machines);
        let log = Mutex::new(Vec::new());
        let in_flight = Mutex::new((0usize, 0usize));
        let t = Instant::now();
        let r = run(
            &deps,
            2,
            |_| None,
            || false,
            |i| {
                {
                    let mut f = in_flight.lock().unwrap();
                    f.0 += 1;
                    f.1 = f.1.max(f.0);
                }
                log.lock().unwrap().push(("start", i));
                std::thread::sleep(Duration::from_millis(50));
                log.lock().unwrap().push(("end", i));
                in_flight.lock().unwrap().0 -= 1;
                (Done::Ok, i)
            },
        );
        assert_eq!(r, (0..8).map(Some).collect::<Vec<_>>());
        assert_eq!(
            in_flight.lock().unwrap().1,
            2,
            "at most 2 at once, and 2 reached"
        );
        assert!(t.elapsed() < Duration::from_millis(390), "ran in parallel");
        let log = log.lock().unwrap();
        let pos = |e: &str, i: usize| log.iter().position(|x| *x == (e, i)).unwrap();
        for (first, second) in [(0, 4), (1, 5), (2, 6), (3, 7)] {
            assert!(pos("end", first) < pos("start", second));
        }
    }

    /// After a failure nothing new starts; what depends on it never runs.
    #[test]
    fn failure_stops_new_starts() {
        let machines = [Some("a"), Some("a"), Some("b")];
        let deps = dependencies(&machines);
        let r = run(
            &deps,
            1,
            |_| None,
            || false,
            |i| (if i == 0 { Done::Failed } else { Done::Ok }, i),
        );
        assert_eq!(r, vec![Some(0), None, None]);
        // `admit` refusing a change counts as its failure.
        let r = run(
            &deps,
            4,
            |i| (i == 0).then_some((Done::Failed, 99)),
            || false,
            |i| (Done::Ok, i),
        );
        assert_eq!(r[0], Some(99));
        assert_eq!(r[1], None);
    }
}
